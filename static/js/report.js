/* Report workspace and worklist behaviour (no inline script: CSP script-src 'self').
 *
 * - htmx swaps 409 (stale save: the conflict box) and 400 (a refused request's message) instead of
 *   dropping them, so a stale autosave is shown, never silently lost.
 * - The conflict box: "use the other text" or "keep mine" (save again on top of the newer version).
 * - Worklist column headers set the hidden sort field and refresh the table.
 * - After an AI draft, the viewer shows the model's attention heatmap (the "attention" overlay).
 * - The workspace layout: report right / below / hidden (localStorage), the viewer filling the window.
 */
(function () {
  "use strict";

  if (window.htmx) {
    window.htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "[23]..", swap: true },
      { code: "409", swap: true, error: false },
      { code: "400", swap: true, error: false },
      { code: "[45]..", swap: false, error: true },
      { code: "...", swap: false },
    ];
  }

  function setVersion(sectionId, version) {
    ["version-", "sign-version-"].forEach(function (prefix) {
      const input = document.getElementById(prefix + sectionId);
      if (input) input.value = version;
    });
  }

  document.addEventListener("click", function (event) {
    const target = event.target.closest("[data-action], [data-sort-key]");
    if (!target) return;
    if (target.dataset.sortKey) {
      const form = document.getElementById("worklist-filter");
      const input = form && form.querySelector("[data-role=sort]");
      if (!input) return;
      const key = target.dataset.sortKey;
      const flipped = key.startsWith("-") ? key.slice(1) : "-" + key;
      input.value = input.value === key ? flipped : key;
      window.htmx.trigger(form, "change");
      return;
    }
    const box = target.closest("[data-conflict]");
    if (target.dataset.action === "use-theirs" && box) {
      const id = box.dataset.section;
      document.getElementById("text-" + id).value = box.querySelector(".their-text").value;
      setVersion(id, box.dataset.version);
      box.outerHTML = '<span id="save-status-' + id + '" class="save-status">Using the other text · version ' +
        Number(box.dataset.version) + "</span>";
    } else if (target.dataset.action === "keep-mine" && box) {
      const id = box.dataset.section;
      setVersion(id, box.dataset.version);
      window.htmx.trigger(document.getElementById("text-" + id), "change");
    } else if (target.dataset.action === "keep-my-text") {
      const confirm = target.closest("[data-role=redraft-confirm]");
      if (confirm) confirm.replaceChildren();
    } else if (target.dataset.action === "close-history") {
      const panel = target.closest(".history");
      if (panel) panel.innerHTML = "";
    }
  });

  function showAttention() {
    if (!document.querySelector("[data-show-attention]")) return;
    const element = document.querySelector("[data-pa-viewer]");
    const viewer = element && element.pathAlignViewer;
    if (!viewer) return;
    const add = function () {
      try {
        const result = viewer.addOverlay("attention");
        if (result && result.catch) result.catch(function () { /* no heatmap for this slide yet */ });
      } catch (err) { /* the overlay is optional */ }
    };
    if (viewer.on) viewer.on("slide-opened", function (detail) { if (!detail || detail.pane === "main") add(); });
    add();
  }
  window.addEventListener("load", showAttention);

  // Workspace layout: the report panel on the right, below the slides or hidden (remembered), and the
  // viewer sized to the window below the workspace's top edge.
  const workspace = document.querySelector(".workspace.ws-with-viewer");
  const LAYOUT_KEY = "pathalign.workspace.report";
  function setLayout(where, remember) {
    if (!workspace || ["right", "bottom", "hidden"].indexOf(where) < 0) return;
    workspace.dataset.report = where;
    document.querySelectorAll("[data-ws-layout]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.dataset.wsLayout === where));
    });
    if (remember) {
      try { window.localStorage.setItem(LAYOUT_KEY, where); } catch (err) { /* storage off */ }
    }
  }
  function fitWorkspace() {
    if (!workspace) return;
    const top = workspace.getBoundingClientRect().top + window.scrollY;
    workspace.style.setProperty("--ws-top", Math.round(top) + "px");
  }
  if (workspace) {
    let saved = null;
    try { saved = window.localStorage.getItem(LAYOUT_KEY); } catch (err) { /* storage off */ }
    if (saved) setLayout(saved, false);
    fitWorkspace();
    window.addEventListener("resize", fitWorkspace);
    window.addEventListener("load", fitWorkspace);
    document.addEventListener("click", function (event) {
      const button = event.target.closest("[data-ws-layout]");
      if (!button) return;
      setLayout(button.dataset.wsLayout, true);
      fitWorkspace();
    });
  }
})();
