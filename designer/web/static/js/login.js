/* The login page: POST /api/login, then go where the user wanted to go. */
"use strict";

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    await Flowmill.api("POST", "/api/login", {
      name: document.getElementById("login-name").value,
      password: document.getElementById("login-password").value,
    });
    const next = new URLSearchParams(location.search).get("next") || "/dashboard";
    // only local paths: never an open redirect
    location.href = next.startsWith("/") && !next.startsWith("//") ? next : "/dashboard";
  } catch (e) {
    error.textContent = e.message;
  }
});
