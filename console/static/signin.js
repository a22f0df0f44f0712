// The sign-in page: where to go after, the error of an unknown token, the language switch.
(function () {
  "use strict";
  const q = new URLSearchParams(location.search);
  document.getElementById("next").value = q.get("next") || "/console/customers";
  document.getElementById("unknown").hidden = q.get("error") !== "unknown";
  document.getElementById("lang").addEventListener("click", () => {
    localStorage.setItem("cdp.console.lang", CDP.lang() === "zh" ? "en" : "zh");
    CDP.applyLabels();
  });
  CDP.applyLabels();
})();
