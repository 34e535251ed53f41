/* placeholder: replaced by the editor page */
"use strict";
Flowmill.ready.then(() => { document.getElementById("editor").textContent = ""; });
