// While the resident approves in the carrier's app, ask again every few seconds so they need not press the button.
(function () {
  "use strict";
  var form = document.getElementById("check-form");
  if (!form || !form.requestSubmit) { return; }
  window.setTimeout(function () { form.requestSubmit(); }, 4000);
})();
