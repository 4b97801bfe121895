// Test page shim: the few WebUI front-end functions DeGu's page relies on, for tests/test_ui_browser.py.
// mirrors (AUTOMATIC1111 1.10.1, same in Forge):
//   script.js               gradioApp(), onUiLoaded() (callbacks run once #txt2img_prompt exists)
//   javascript/ui.js        updateInput()
//   javascript/inputAccordion.js  inputAccordionChecked(), setupAccordion() for every .input-accordion
// Difference: gradio 4 adds `Blocks(head=...)` scripts after DOMContentLoaded, so the observer also
// starts at once when the document has already loaded.
(function () {
    const uiLoadedCallbacks = [];
    let executedOnLoaded = false;

    window.gradioApp = function () {
        const elems = document.getElementsByTagName("gradio-app");
        const elem = elems.length === 0 ? document : elems[0];
        if (elem !== document) {
            elem.getElementById = (id) => document.getElementById(id);
        }
        return elem.shadowRoot ? elem.shadowRoot : elem;
    };

    window.onUiLoaded = function (callback) {
        uiLoadedCallbacks.push(callback);
    };

    window.updateInput = function (target) {
        const e = new Event("input", { bubbles: true });
        Object.defineProperty(e, "target", { value: target });
        target.dispatchEvent(e);
    };

    function runUiLoaded() {
        if (executedOnLoaded || !gradioApp().querySelector("#txt2img_prompt")) return;
        executedOnLoaded = true;
        for (const callback of uiLoadedCallbacks) {
            try {
                callback();
            } catch (e) {
                console.error("error running callback", callback, ":", e);
            }
        }
    }

    function observe() {
        new MutationObserver(runUiLoaded).observe(gradioApp(), { childList: true, subtree: true });
        runUiLoaded();
    }

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", observe);
    } else {
        observe();
    }

    window.inputAccordionChecked = function (id, checked) {
        const accordion = gradioApp().getElementById(id);
        accordion.visibleCheckbox.checked = checked;
        accordion.onVisibleCheckboxChange();
    };

    function setupAccordion(accordion) {
        const labelWrap = accordion.querySelector(".label-wrap");
        const gradioCheckbox = gradioApp().querySelector("#" + accordion.id + "-checkbox input");
        const span = labelWrap.querySelector("span");
        let linked = true;
        const isOpen = () => labelWrap.classList.contains("open");

        new MutationObserver(() => {
            accordion.classList.toggle("input-accordion-open", isOpen());
            if (linked) {
                accordion.visibleCheckbox.checked = isOpen();
                accordion.onVisibleCheckboxChange();
            }
        }).observe(labelWrap, { attributes: true, attributeFilter: ["class"] });

        const visibleCheckbox = document.createElement("INPUT");
        visibleCheckbox.type = "checkbox";
        visibleCheckbox.checked = isOpen();
        visibleCheckbox.id = accordion.id + "-visible-checkbox";
        visibleCheckbox.className = gradioCheckbox.className + " input-accordion-checkbox";
        span.insertBefore(visibleCheckbox, span.firstChild);

        accordion.visibleCheckbox = visibleCheckbox;
        accordion.onVisibleCheckboxChange = function () {
            if (linked && isOpen() !== visibleCheckbox.checked) {
                labelWrap.click();
            }
            gradioCheckbox.checked = visibleCheckbox.checked;
            updateInput(gradioCheckbox);
        };
        visibleCheckbox.addEventListener("click", (event) => {
            linked = false;
            event.stopPropagation();
        });
        visibleCheckbox.addEventListener("input", accordion.onVisibleCheckboxChange);
    }

    onUiLoaded(function () {
        for (const accordion of gradioApp().querySelectorAll(".input-accordion")) {
            setupAccordion(accordion);
        }
    });
})();
