// "I agree to all" on the carrier form ticks and unticks each consent, and shows ticked when each one is.
(function () {
  "use strict";
  var all = document.getElementById("consent");
  var items = Array.prototype.slice.call(document.querySelectorAll(".consent-item input[type=checkbox]"));
  if (!all || !items.length) { return; }
  function sync() { all.checked = items.every(function (item) { return item.checked; }); }
  all.addEventListener("change", function () { items.forEach(function (item) { item.checked = all.checked; }); });
  items.forEach(function (item) { item.addEventListener("change", sync); });
  sync();
})();
