// The status page's script: live updates and the buttons. The page is whole
// without it; this only swaps in a fresh #main when the server says the
// status changed, and sends the buttons' POSTs with the page's CSRF value.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="lockbox-csrf"]').content;
  const main = document.getElementById("main");
  let said = "";

  async function refresh() {
    const r = await fetch("/main" + location.search, { credentials: "same-origin" });
    if (!r.ok) return;
    main.innerHTML = await r.text();
    const p = document.getElementById("said");
    if (p) p.textContent = said;
  }

  const events = new EventSource("/events");
  events.onmessage = () => { refresh().catch(() => {}); };

  main.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (!b) return;
    b.disabled = true;
    try {
      const r = await fetch(b.dataset.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-Lockbox-CSRF": csrf, "Content-Type": "text/plain" },
        body: b.dataset.name || "",
      });
      said = (await r.text()).trim();
    } catch (e) {
      said = "the agent did not answer: " + e;
    }
    await refresh();
  });
})();
