// Slide upload with a progress bar: XHR streams the file; the server answers JSON {ok, error}.
(function () {
  document.querySelectorAll("form.upload-form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var bar = form.querySelector("progress");
      var status = form.querySelector(".upload-status");
      var button = form.querySelector("button[type=submit]");
      var file = form.querySelector("input[type=file]").files[0];
      var limit = Number(form.dataset.maxBytes || 0);
      if (file && limit && file.size > limit) {
        status.textContent = "The file is larger than the upload limit of " + (limit / 1073741824).toFixed(1) + " GB.";
        status.classList.add("error");
        return;
      }
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("X-CSRFToken", form.querySelector("[name=csrfmiddlewaretoken]").value);
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) { bar.value = Math.round((100 * e.loaded) / e.total); }
        status.textContent = "Uploading… " + bar.value + "%";
      });
      xhr.addEventListener("load", function () {
        var body = {};
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = {error: "Unexpected server answer (" + xhr.status + ")."}; }
        button.disabled = false;
        if (xhr.status === 201 && body.ok) {
          status.textContent = "Stored " + body.name + ".";
          window.location.reload();
        } else {
          bar.hidden = true;
          status.textContent = body.error || ("Upload failed (" + xhr.status + ").");
          status.classList.add("error");
        }
      });
      xhr.addEventListener("error", function () {
        button.disabled = false;
        status.textContent = "The connection failed during the upload; nothing was stored.";
        status.classList.add("error");
      });
      bar.hidden = false; bar.value = 0; button.disabled = true;
      status.classList.remove("error");
      status.textContent = "Uploading…";
      xhr.send(new FormData(form));
    });
  });
})();
