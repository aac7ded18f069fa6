// The code page's clocks: how long the code (or the app request) still lives, and when a new code may be asked for.
// The ticking clock is for the eye; the live region speaks only at 1:00 and 0:00, so a screen reader is not
// interrupted every second. Times count from the page load (the server said how many seconds were left), so a
// phone whose clock is wrong still shows the right time.
(function () {
  "use strict";
  var loaded = Date.now();
  function left(seconds) { return seconds - Math.floor((Date.now() - loaded) / 1000); }
  function clock(seconds) { var s = Math.max(0, seconds); return Math.floor(s / 60) + ":" + ("0" + (s % 60)).slice(-2); }

  var countdown = document.getElementById("countdown");
  var announce = document.getElementById("countdown-announce");
  var resend = document.getElementById("resend");
  var resendWait = document.getElementById("resend-wait");
  var lifetime = countdown ? parseInt(countdown.getAttribute("data-seconds"), 10) || 0 : 0;
  var waitFor = resendWait ? parseInt(resendWait.getAttribute("data-seconds"), 10) || 0 : 0;
  // approval.js reloads the app page every few seconds: a page that loads just under 1:00 still says it.
  var saidMinute = lifetime <= 55;
  var saidExpired = lifetime <= 0;

  function tick() {
    var more = false;
    if (countdown && !saidExpired) {
      var remaining = left(lifetime);
      if (remaining <= 0) {
        saidExpired = true;
        countdown.textContent = countdown.getAttribute("data-expired");
        if (announce) { announce.textContent = countdown.getAttribute("data-expired"); }
      } else {
        more = true;
        var shown = countdown.querySelector(".countdown-clock");
        if (shown) { shown.textContent = clock(remaining); }
        if (!saidMinute && remaining <= 60) {
          saidMinute = true;
          if (announce) { announce.textContent = countdown.getAttribute("data-one-minute"); }
        }
      }
    }
    if (resend && resendWait && resend.disabled) {
      var wait = left(waitFor);
      if (wait <= 0) {
        resend.disabled = false;
        resend.removeAttribute("aria-describedby");
        resendWait.hidden = true;
      } else {
        more = true;
        var template = resendWait.getAttribute(wait === 1 ? "data-one" : "data-other");
        resendWait.textContent = template.replace("{n}", String(wait));
      }
    }
    if (more) { window.setTimeout(tick, 1000 - ((Date.now() - loaded) % 1000)); }
  }
  tick();
})();
