// Passkeys: sign in (button and autofill through conditional mediation) and register, on WebAuthn Level 3.
(function () {
  "use strict";
  if (!window.PublicKeyCredential) { return; }
  var csrf = document.querySelector('meta[name="csrf-token"]');
  var token = csrf ? csrf.getAttribute("content") : "";

  function b64urlToBuffer(value) {
    var base64 = value.replace(/-/g, "+").replace(/_/g, "/");
    var padded = base64 + "===".slice((base64.length + 3) % 4);
    var binary = atob(padded);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    return bytes.buffer;
  }

  function bufferToB64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) { binary += String.fromCharCode(bytes[i]); }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function requestOptions(json) {
    if (PublicKeyCredential.parseRequestOptionsFromJSON) { return PublicKeyCredential.parseRequestOptionsFromJSON(json); }
    json.challenge = b64urlToBuffer(json.challenge);
    (json.allowCredentials || []).forEach(function (c) { c.id = b64urlToBuffer(c.id); });
    return json;
  }

  function creationOptions(json) {
    if (PublicKeyCredential.parseCreationOptionsFromJSON) { return PublicKeyCredential.parseCreationOptionsFromJSON(json); }
    json.challenge = b64urlToBuffer(json.challenge);
    json.user.id = b64urlToBuffer(json.user.id);
    (json.excludeCredentials || []).forEach(function (c) { c.id = b64urlToBuffer(c.id); });
    return json;
  }

  function credentialJSON(credential) {
    if (credential.toJSON) { return credential.toJSON(); }
    var response = credential.response;
    var out = { id: credential.id, rawId: bufferToB64url(credential.rawId), type: credential.type,
      clientExtensionResults: credential.getClientExtensionResults(), response: {} };
    ["clientDataJSON", "authenticatorData", "signature", "userHandle", "attestationObject"].forEach(function (k) {
      if (response[k]) { out.response[k] = bufferToB64url(response[k]); }
    });
    if (response.getTransports) { out.response.transports = response.getTransports(); }
    return out;
  }

  function post(url, body) {
    return fetch(url, { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": token },
      body: body === undefined ? "{}" : JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (data) { return { ok: r.ok, data: data }; }); });
  }

  function announce(message) {
    var box = document.getElementById("passkey-status");
    if (box) { box.textContent = message; box.hidden = false; box.focus(); }
  }

  function signIn(mediation, signal) {
    return post("/login/passkey/options").then(function (res) {
      var options = { publicKey: requestOptions(res.data) };
      if (mediation) { options.mediation = mediation; }
      if (signal) { options.signal = signal; }
      return navigator.credentials.get(options);
    }).then(function (credential) {
      if (!credential) { return null; }
      return post("/login/passkey/verify", credentialJSON(credential));
    }).then(function (res) {
      if (!res) { return; }
      if (res.ok && res.data.redirect) { window.location.assign(res.data.redirect); }
      else { announce(res.data.message || ""); }
    });
  }

  function buttonSignIn(attempt) {
    var started = Date.now();
    return signIn(null, null).catch(function (error) {
      // Chromium ends an aborted autofill request a moment after its promise rejects, and refuses a request
      // started in that moment at once ("already pending"). Nobody dismisses the passkey sheet that fast: retry.
      if (error && error.name === "NotAllowedError" && Date.now() - started < 600 && attempt < 3) {
        return new Promise(function (resolve) { setTimeout(resolve, 250); }).then(function () {
          return buttonSignIn(attempt + 1);
        });
      }
      throw error;
    });
  }

  var autofill = null;
  var autofillDone = Promise.resolve();
  var pressed = false;
  var button = document.getElementById("passkey-signin");
  if (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      // One WebAuthn request at a time: the button replaces the autofill request (or stops it from starting).
      pressed = true;
      if (autofill) { autofill.abort(); autofill = null; }
      // The browser allows one request at a time: start only once the aborted autofill request has ended.
      autofillDone.then(function () { return buttonSignIn(0); }).catch(function (error) {
        if (error && error.name !== "NotAllowedError" && error.name !== "AbortError") {
          announce(button.getAttribute("data-failed"));
        }
      });
    });
    if (PublicKeyCredential.isConditionalMediationAvailable) {
      PublicKeyCredential.isConditionalMediationAvailable().then(function (available) {
        if (!available || pressed) { return; }
        autofill = new AbortController();
        autofillDone = signIn("conditional", autofill.signal).catch(function () { /* dismissed or aborted */ });
      });
    }
  }

  var register = document.getElementById("passkey-register");
  if (register) {
    register.hidden = false;
    register.addEventListener("click", function () {
      var nameField = document.getElementById("passkey-name");
      var name = nameField ? nameField.value : "";
      post("/account/passkeys/options").then(function (res) {
        if (!res.ok) {
          // An old sign-in: the resident signs in again first, then comes back here.
          if (res.data.redirect) { window.location.assign(res.data.redirect); }
          throw { name: "SignInAgain", message: res.data.message };
        }
        return navigator.credentials.create({ publicKey: creationOptions(res.data) });
      }).then(function (credential) {
        return post("/account/passkeys/verify?name=" + encodeURIComponent(name), credentialJSON(credential));
      }).then(function (res) {
        // On the welcome page the resident goes on to the service that asked (data-next), not to the list.
        var then = register.getAttribute("data-next");
        if (res.ok && (then || res.data.redirect)) { window.location.assign(then || res.data.redirect); }
        else { announce(res.data.message || register.getAttribute("data-failed")); }
      }).catch(function (error) {
        if (error && error.name === "SignInAgain") { announce(error.message || ""); }
        else if (!error || error.name !== "NotAllowedError") { announce(register.getAttribute("data-failed")); }
      });
    });
  }
})();
