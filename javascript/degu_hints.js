// Tooltips for the DeGu accordion, in the WebUI's hint convention (a `title` on the control).
// The texts are DeGuSettings' help strings; tests/test_ui_assets.py keeps them in sync.
(function () {
    const degu_hints = {
    "enabled": "Turn Decoupled Guidance on.",
    "subject": "The word(s) that name your personalised subject in the prompt: sks, ohwx, a trigger word or an embedding name. Include the class word (sks dog, generic dog): the mask then follows both words and finds the subject better.",
    "generic": "What the subject becomes in the context prompt: 'dog' for 'sks dog' -> 'dog', 'a' for 'sks dog' -> 'a dog'. Empty removes the subject word.",
    "identity_scale": "Multiplies the guidance of the prompt as written, inside the subject mask.",
    "context_scale": "Multiplies the guidance of the generic prompt, outside the subject mask.",
    "balance": "+1: identity guidance everywhere (max fidelity). -1: generic guidance everywhere (max editability). 0: the estimated subject mask.",
    "mask_source": "attention: where the image looks at the subject token. difference: where removing the subject changes the prediction. full: no spatial mixing.",
    "threshold": "Normalised attention above this counts as subject.",
    "softness": "Width of the transition around the threshold; 0 gives a hard edge.",
    "blur": "Gaussian blur of the mask, in latent pixels (8 image pixels).",
    "ema": "How much of the previous step's mask is kept; 0 uses each step's mask alone.",
    "start": "Fraction of the sampling steps where DeGu starts.",
    "end": "Fraction of the sampling steps where DeGu stops (1: the last step).",
    "show_mask": "Add the final mask as a heat-map over each image to the gallery.",
    "context_refresh": "Run the generic prompt only on every N-th step and reuse its difference to the prompt in between: 3 costs about 1.2x plain CFG instead of 1.5x, with a slightly weaker context. 1 runs it on every step (exact); below balance 0 it always runs on every step.",
    "snap": "Rounds of edge-aware smoothing that pull the coarse attention mask onto the subject's outline in the predicted image (5 follows it best). The tighter mask hands the subject's rim to the scene and measured no better overall, so 0 (off) is the default.",
    "layout_pass": "Sample each image twice from the same noise: the first pass finds where the subject lands, the second guides with a tight mask of that place from the first step. About twice the time. On the project's test models, with an ancestral sampler (Euler a, DPM++ SDE), it nearly tripled DeGu's gain over a global mix and moved the result towards the scene; with a deterministic one (DPM++ 2M, Euler, DDIM) it gained nothing measurable. Needs the attention mask."
};

    function applyDeguHints() {
        for (const tab of ["txt2img", "img2img"]) {
            for (const [name, text] of Object.entries(degu_hints)) {
                const root = gradioApp().getElementById(`script_${tab}_degu_${name}`);
                if (!root) continue;
                root.title = text;
                // Only this control's own parts: the accordion contains the other controls.
                root.querySelectorAll("input, textarea, label, span").forEach((el) => {
                    const owner = el.parentElement && el.parentElement.closest('[id*="_degu_"]');
                    if (owner === root || el.id.startsWith(root.id)) el.title = text;
                });
            }
        }
    }

    onUiLoaded(applyDeguHints);
})();
