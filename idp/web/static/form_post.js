// OAuth 2.0 Form Post Response Mode: send the response to the service at once; the button is there without JS.
(function () {
  "use strict";
  var form = document.getElementById("form-post");
  if (form) { form.submit(); }
})();
