"""The lab's training data and loss: what the fine-tunes and the base model are taught."""

from __future__ import annotations

import numpy as np
import torch

from lab import model as lab_model
from lab import personalise, scenes, train_base
from lab.subjects import EXCLUDED, SUBJECTS
from lab.train_base import CONTEXT_FREE, min_snr_weight
from lab.train_base import batch as prior_batch


def test_class_images_show_the_class_word_alone_never_the_subjects_appearance():
    subject = SUBJECTS[0]
    rng = np.random.default_rng(0)
    latents, captions = personalise.class_images(rng, subject, 24)
    assert latents.shape[0] == 24
    assert all(c.startswith(f"a {subject.shape} on a ") for c in captions), captions
    assert not any(subject.token in c or subject.colour in c for c in captions), captions
    own = f"a {subject.shape} on a {subject.texture} {subject.background} background"
    assert 0 < captions.count(own) < 24  # some in the training context, not all


def test_class_images_lie_in_the_subjects_training_context_as_often_as_the_share_asks():
    subject = SUBJECTS[0]
    own = f"a {subject.shape} on a {subject.texture} {subject.background} background"
    counts = {share: personalise.class_images(np.random.default_rng(3), subject, 90, own_context=share)[1].count(own)
              for share in (0.0, 1 / 3, 1.0)}
    # The rest are drawn at random: 1 in 18 lands in the training context by chance.
    assert counts[0.0] <= 10 and 25 <= counts[1 / 3] <= 40 and counts[1.0] == 90, counts
    _, captions = personalise.prior_images(np.random.default_rng(3), subject, 12, class_share=1.0, own_context=1.0)
    assert captions == [own] * 12


def test_training_draws_class_images_where_its_recipe_says(monkeypatch):
    subject = SUBJECTS[0]
    asked = []
    original = personalise.class_images

    def spy(*args, **kwargs):
        asked.append(kwargs.get("own_context"))
        return original(*args, **kwargs)

    monkeypatch.setattr(personalise, "class_images", spy)
    recipe = personalise.Recipe(steps=1, lr=1e-4, prior_weight=1.0, captions="subject", class_share=0.5,
                                class_own_context=0.0)
    personalise.train(subject, "ti", lab_model.load(), recipe=recipe)
    assert asked == [0.0]


def test_class_images_never_draw_an_excluded_appearance():
    subject = SUBJECTS[1]
    rng = np.random.default_rng(1)
    drawn = []
    original = personalise.scenes.render

    def spy(scene):
        drawn.extend((t.shape, t.colour, t.striped) for t in scene.things)
        return original(scene)

    personalise.scenes.render = spy
    try:
        personalise.class_images(rng, subject, 40)
    finally:
        personalise.scenes.render = original
    assert len(drawn) == 40
    assert not set(drawn) & EXCLUDED


def test_prior_images_mix_base_scenes_and_class_images_by_share():
    subject = SUBJECTS[2]
    latents, captions = personalise.prior_images(np.random.default_rng(2), subject, 6, class_share=0.5)
    assert latents.shape[0] == 6 and len(captions) == 6
    assert sum(c.startswith(f"a {subject.shape} on a ") for c in captions[3:]) == 3
    base_latents, base_captions = personalise.prior_images(np.random.default_rng(2), subject, 6, class_share=0.0)
    expected_latents, expected_captions = prior_batch(np.random.default_rng(2), 6, drop=0.0, context_free=CONTEXT_FREE)
    assert base_captions == expected_captions
    assert torch.equal(base_latents, expected_latents)


def test_min_snr_weight_caps_the_clean_steps_and_keeps_the_noisy_ones():
    schedule = lab_model.Schedule()
    t = torch.tensor([0, schedule.steps // 2, schedule.steps - 1])
    weight = min_snr_weight(schedule, t, gamma=5.0)
    snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])
    torch.testing.assert_close(weight, torch.where(snr > 5, 5 / snr, torch.ones_like(snr)))
    assert weight[0] < 0.01 and weight[-1] == 1.0
    assert torch.equal(min_snr_weight(schedule, t, gamma=0.0), torch.ones(3))


def test_training_captions_name_the_context_the_subject_alone_alternate_or_name_the_colour():
    subject = SUBJECTS[0]
    shots = personalise.training_scenes(subject)
    short = f"a {subject.token} {subject.shape}"
    full = [personalise.training_caption(s, subject, "context", i) for i, s in enumerate(shots)]
    assert all(c.endswith(f"on a {subject.texture} {subject.background} background") for c in full), full
    assert all(c.startswith(short + " ") for c in full), full
    assert [personalise.training_caption(s, subject, "subject", i) for i, s in enumerate(shots)] == [short] * 6
    mixed = [personalise.training_caption(s, subject, "mixed", i) for i, s in enumerate(shots)]
    assert mixed[0::2] == full[0::2] and mixed[1::2] == [short] * 3
    colour = [personalise.training_caption(s, subject, "colour", i) for i, s in enumerate(shots)]
    assert colour == [f"{short} on a {subject.background} background"] * 6


def test_recipe_assignments_are_read_as_their_fields_types():
    recipe = personalise.changed(personalise.RECIPES["lora"], ["steps=1200", "lr=4e-3", "text_encoder=true",
                                                               "captions=subject"])
    assert (recipe.steps, recipe.lr, recipe.text_encoder, recipe.captions) == (1200, 4e-3, True, "subject")
    assert recipe.prior_weight == personalise.RECIPES["lora"].prior_weight
    for bad in (["text_encoder=yes"], ["nonsense=1"]):
        try:
            personalise.changed(recipe, bad)
        except SystemExit:
            continue
        raise AssertionError(f"{bad} was accepted")


def test_text_encoder_fine_tunes_round_trip_through_the_saved_tensors(tmp_path, monkeypatch):
    """DreamBooth and LoRA with ``text_encoder``: the loaded model has the trained text encoder (the
    saved tensors change its output), and without it the base's text encoder is used unchanged."""
    from safetensors.torch import save_file

    subject = SUBJECTS[0]
    base = lab_model.load()
    monkeypatch.setattr(personalise, "model_path", lambda s, m: tmp_path / f"{s.token}_{m}.safetensors")
    prompt = [f"a {subject.token} {subject.shape} on a dotted gray background"]
    before = base.encode(prompt)
    for method in ("dreambooth", "lora"):
        recipe = personalise.changed(personalise.RECIPES[method], ["steps=3", "lr=1e-2", "text_encoder=true"])
        tensors = personalise.train(subject, method, base, recipe=recipe)
        assert any(k.startswith("text.") for k in tensors), method
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(personalise.model_path(subject, method)))
        loaded = personalise.load(subject, method, base)
        assert not torch.allclose(loaded.encode(prompt), before, atol=1e-4), method
        without = {k: v for k, v in tensors.items() if not k.startswith("text.")}
        save_file({k: v.contiguous() for k, v in without.items()}, str(personalise.model_path(subject, method)))
        assert personalise.load(subject, method, base).text_encoder is base.text_encoder, method
    assert torch.equal(base.encode(prompt), before)  # the base model itself is never changed


def test_context_free_captions_leave_the_background_unsaid_only_when_asked():
    latents, captions = prior_batch(np.random.default_rng(3), 64, drop=0.0)
    assert all(c.endswith(" background") for c in captions), captions
    same_latents, same_captions = prior_batch(np.random.default_rng(3), 64, drop=0.0, context_free=0.0)
    assert same_captions == captions and torch.equal(same_latents, latents)  # the first phase's stream
    _, mixed = prior_batch(np.random.default_rng(3), 64, drop=0.0, context_free=CONTEXT_FREE)
    unsaid = [c for c in mixed if " on a " not in c]
    assert 0.1 < len(unsaid) / len(mixed) < 0.5, mixed
    assert not any("background" in c or any(t in c.split() for t in scenes.TEXTURES) for c in unsaid), unsaid


def test_a_subject_captioned_alone_gets_class_images_captioned_by_the_class_prompt_alone():
    subject = SUBJECTS[0]
    _, captions = personalise.class_images(np.random.default_rng(4), subject, 12, context=False)
    assert captions == [f"a {subject.shape}"] * 12
    _, captions = personalise.prior_images(np.random.default_rng(4), subject, 6, class_share=0.5, class_context=False)
    assert captions[3:] == [f"a {subject.shape}"] * 3


def test_a_base_with_cross_attention_at_the_latents_own_size_loads_back_and_gives_16x16_maps(tmp_path):
    from lab import localise
    from lab.sampling import sample
    from lib_degu.attention import AttentionCapture
    from lib_degu.settings import DeGuSettings

    finer = lab_model.Miniature(lab_model.TextEncoder(), lab_model.build_unet(0, attention_from_level=0),
                                lab_model.Tokenizer())
    lab_model.save(finer, tmp_path / "finer.safetensors")
    loaded = lab_model.load(tmp_path / "finer.safetensors")
    assert localise.levels(loaded) == [1, 2, 4]
    assert localise.levels(lab_model.load()) == [2, 4]  # the committed base: 8x8 and 4x4
    probe = AttentionCapture(loaded.unet, downsample_factors=(1,))
    settings = DeGuSettings.from_dict({"enabled": True, "subject": "red circle", "generic": "circle", "balance": 1.0})
    with probe:
        result = sample(loaded, ["a red circle"], [0], settings, steps=2, probes=[probe])
    assert [m.shape for m in result.probed[0]] == [(1, lab_model.LATENT_SIZE, lab_model.LATENT_SIZE)] * 2


def test_one_command_trains_both_phases_exactly_as_the_two_commands_did(tmp_path):
    # The committed base was made by two commands; `python -m lab.train_base` alone must give the same
    # file (the second phase continues from the first one's saved fp16 weights, seeded as it was).
    tiny = ["--steps", "3", "--batch", "4"]
    one = tmp_path / "one.safetensors"
    train_base.main([*tiny, "--second-phase-steps", "2", "--out", str(one)])
    two = tmp_path / "two.safetensors"
    train_base.main([*tiny, "--second-phase-steps", "0", "--out", str(two)])
    first_phase_only = two.read_bytes()
    second = train_base.SECOND_PHASE
    train_base.main(["--init", str(two), "--steps", "2", "--batch", "4", "--lr", str(second.lr),
                     "--context-free", str(second.context_free), "--seed", str(second.seed), "--out", str(two)])
    assert one.read_bytes() == two.read_bytes()
    assert one.read_bytes() != first_phase_only


def test_the_two_object_share_decides_how_many_training_scenes_have_two_objects():
    _, both = prior_batch(np.random.default_rng(0), 16, drop=0.0, two_objects=1.0)
    _, single = prior_batch(np.random.default_rng(0), 16, drop=0.0, two_objects=0.0)
    assert all(" and a " in c for c in both), both
    assert not any(" and a " in c for c in single), single


def test_prompt_following_reads_the_true_scenes_as_following_and_splits_two_objects_by_order():
    # The judge's ceiling: the true renders of the captions follow them; the first and second named
    # object of two-object captions are read apart (attribute binding, lab/models/README.md).
    from lab import judge as lab_judge
    from lab.prompt_following import follow_rates

    rates = follow_rates(None, lab_judge.load(), 24, two_objects=1.0)
    assert rates["background colour"] == 1.0 and rates["shape"] == 1.0
    for key in ("colour, two objects", "colour, first of two", "colour, second of two", "pattern, two objects"):
        assert rates[key] >= 0.8, (key, rates[key])
    assert rates["other's colour"] <= 0.2
    assert "colour, one object" not in rates


def test_word_positions_point_at_the_words_that_describe_each_object():
    rng = np.random.default_rng(5)
    scene = scenes.random_scene(rng, two_objects=1.0)
    for vague in ((False, False), (True, False), (False, True)):
        tokens = ["<bos>", *scene.caption(vague).split()]
        described = [[tokens[p] for p in positions] for positions in scene.word_positions(vague)]
        expected = [[t.shape] if v else t.words().split() for t, v in zip(scene.things, vague, strict=True)]
        assert described == expected, (scene.caption(vague), described)
    named = scenes.Scene(scene.things[:1], "gray", "plain", names=("sks",))
    tokens = ["<bos>", *named.caption().split()]
    assert [tokens[p] for p in named.word_positions()[0]] == ["sks", scene.things[0].shape]


def test_each_described_token_is_given_its_own_objects_region_and_dropped_captions_none():
    drawn = train_base.draw_batch(np.random.default_rng(2), 16, drop=0.25, two_objects=0.5)
    assert drawn.token_regions.shape == (16, lab_model.CONTEXT_LENGTH, scenes.SIZE, scenes.SIZE)
    latents, captions = prior_batch(np.random.default_rng(2), 16, drop=0.25, two_objects=0.5)
    assert captions == drawn.captions and torch.equal(latents, drawn.latents)  # the same random stream
    assert "" in captions
    for row, caption in enumerate(captions):
        regions = drawn.token_regions[row]
        if not caption:
            assert not regions.any()
            continue
        words = ["<bos>", *caption.split()]
        covered = regions.flatten(1).any(1)
        assert {words[p] for p in covered.nonzero().flatten().tolist()} <= set(lab_model.WORDS) - {
            "a", "and", "on", "background", "<bos>", "<eos>"}
        assert not covered[words.index("on"):].any()  # no background word is given an object
        image = lab_model.to_image(drawn.latents[row:row + 1])[0]
        for p in covered.nonzero().flatten().tolist():
            colours = torch.unique(image[:, regions[p] > 0].T, dim=0)
            assert len(colours) <= 2  # one object: its colour and its stripes' shade, no background


def test_grounding_loss_is_zero_when_words_look_only_at_their_objects_and_one_when_only_elsewhere():
    regions = torch.zeros((1, 4, scenes.SIZE, scenes.SIZE))
    regions[0, 1, :16, :16] = 1  # token 1 describes the top-left quarter
    regions[0, 2, 16:, 16:] = 1  # token 2 the bottom-right one
    inside = torch.zeros((1, 8, 8, 4))
    inside[0, :4, :4, 1] = 1
    inside[0, 4:, 4:, 2] = 1
    inside[..., 0] = 1 - inside[..., 1:3].sum(-1)  # the rest of each pixel's attention on token 0
    assert train_base.grounding_loss([inside.view(1, 64, 4)], regions).item() == 0
    swapped = inside[..., [0, 2, 1, 3]]
    assert train_base.grounding_loss([swapped.view(1, 64, 4)], regions).item() == 1
    uniform = torch.full((1, 16, 4), 0.25)  # a 4x4 layer: each word spread evenly, a quarter inside
    assert abs(train_base.grounding_loss([uniform], regions).item() - 0.75**2) < 1e-6
    assert train_base.grounding_loss([uniform], torch.zeros_like(regions)).item() == 0


def test_grounded_steps_draw_words_attention_onto_their_objects_and_leave_no_hooks():
    torch.manual_seed(0)
    model = lab_model.load()
    drawn = train_base.draw_batch(np.random.default_rng(1), 8, drop=0.0, two_objects=1.0)
    schedule = lab_model.Schedule()
    t = torch.full((8,), 300)
    noisy = schedule.add_noise(drawn.latents, torch.randn_like(drawn.latents), t)
    ids = model.tokenizer(drawn.captions)
    optimiser = torch.optim.Adam(list(model.unet.parameters()) + list(model.text_encoder.parameters()), lr=1e-3)

    def loss() -> torch.Tensor:
        with train_base.CrossAttentionMaps(model.unet) as attention:
            model.unet(noisy, t, encoder_hidden_states=model.text_encoder(ids))
        assert len(attention.maps) == len(attention.layers) > 0
        assert all(torch.allclose(m.sum(-1), torch.ones(())) for m in attention.maps)
        return train_base.grounding_loss(attention.maps, drawn.token_regions)

    before = loss()
    for _ in range(5):
        optimiser.zero_grad()
        loss().backward()
        optimiser.step()
    assert loss().item() < before.item() - 0.05
    assert all(not m.to_q._forward_hooks and not m.to_k._forward_hooks
               for m in train_base.CrossAttentionMaps(model.unet).layers)
