// The few behaviours pages need, without inline scripts: light/dark, copy buttons, self-refreshing pages.
(function () {
  var root = document.documentElement;
  var stored = null;
  try { stored = localStorage.getItem("mindrouter-theme"); } catch (e) {}
  var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  root.setAttribute("data-bs-theme", stored || (dark ? "dark" : "light"));

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-theme-toggle]").forEach(function (button) {
      button.addEventListener("click", function () {
        var next = root.getAttribute("data-bs-theme") === "dark" ? "light" : "dark";
        root.setAttribute("data-bs-theme", next);
        try { localStorage.setItem("mindrouter-theme", next); } catch (e) {}
      });
    });
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var text = document.getElementById(button.getAttribute("data-copy")).textContent.trim();
        navigator.clipboard.writeText(text).then(function () { button.textContent = "Copied"; },
                                                 function () { button.textContent = "Select and copy"; });
      });
    });
    var refresh = document.querySelector("[data-refresh-seconds]");
    if (refresh) {
      var seconds = parseInt(refresh.getAttribute("data-refresh-seconds"), 10);
      setTimeout(function () { window.location.reload(); }, seconds * 1000);
    }
  });
})();
