// Rating page keys: 1-5 rate, D M H G O pick the kind of error, C comment, N or Enter save and go on,
// B back, Esc leaves the comment box. Keys typed inside the slide viewer belong to the viewer (its own
// 1-5 set the magnification, WASD pan), except N, which saves from anywhere.
(function () {
  "use strict";
  const form = document.getElementById("ev-rating-form");
  if (!form) return;
  const errorMax = Number(form.dataset.errorMax || 3);
  const clientError = form.querySelector(".ev-client-error");
  const errorBox = document.getElementById("ev-errors");

  function score() {
    const checked = form.querySelector("input[name=score]:checked");
    return checked ? Number(checked.value) : null;
  }

  function errorKind() {
    const checked = form.querySelector("input[name=error_kind]:checked");
    return checked ? checked.value : "";
  }

  function refresh() {
    const value = score();
    const needed = value !== null && value <= errorMax;
    errorBox.classList.toggle("ev-needed", needed);
    if (!needed || errorKind()) clientError.hidden = true;
  }

  // Refuse to submit a low rating without a kind of error (the server checks the same rule).
  form.addEventListener("submit", (event) => {
    const value = score();
    if (value !== null && value <= errorMax && !errorKind()) {
      event.preventDefault();
      clientError.hidden = false;
      errorBox.scrollIntoView({ block: "nearest" });
    }
  });
  form.addEventListener("change", refresh);

  function submitNext() {
    const next = document.getElementById("ev-save-next");
    if (!next) return;
    if (typeof form.requestSubmit === "function") form.requestSubmit(next);
    else next.click();
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) {
      if (event.key === "Enter" && event.target.closest("textarea")) { event.preventDefault(); submitNext(); }
      return;
    }
    const target = event.target;
    if (target.closest("textarea, input[type=text], select")) {
      if (event.key === "Escape") target.blur();
      return;
    }
    // Inside the viewer its own keys (1-5 magnification, WASD pan, m ruler, ...) win; only n saves from there.
    if (target.closest("[data-pa-viewer]") && event.key.toLowerCase() !== "n") return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if ("12345".includes(key) && key.length === 1) {
      const radio = form.querySelector(`input[name=score][value="${key}"]`);
      if (radio && !radio.disabled) { radio.checked = true; refresh(); }
    } else if (key === "n" || (key === "Enter" && !target.closest("button, a"))) {
      submitNext();
    } else if (key === "b") {
      const back = document.getElementById("ev-back");
      if (back) window.location.assign(back.href);
    } else if (key === "c") {
      form.querySelector("textarea[name=comment]").focus();
    } else {
      const kind = form.querySelector(`input[name=error_kind][data-key="${key}"]`);
      if (!kind || kind.disabled) return;
      kind.checked = true;
      refresh();
    }
    event.preventDefault();
  });

  refresh();
})();
