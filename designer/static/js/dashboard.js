/* placeholder: replaced by the dashboard page */
"use strict";
Flowmill.ready.then(() => { document.getElementById("dashboard").textContent = ""; });
