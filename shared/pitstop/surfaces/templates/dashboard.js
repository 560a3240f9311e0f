// Live parts (marked data-live, each with an id) are fetched again every few seconds and swapped in;
// the rest of the page (a confirmation being typed) is left alone.
(function () {
  const every = Number(document.body.dataset.refresh || 3) * 1000;
  const stamp = document.getElementById("refreshed");

  async function refresh() {
    try {
      const url = new URL(location.href);
      url.searchParams.set("live", "1");  // only the live parts are looked at: the server may skip the rest
      const response = await fetch(url, {cache: "no-store", headers: {"Accept": "text/html"}});
      if (!response.ok) throw new Error("HTTP " + response.status);
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const part of document.querySelectorAll("[data-live]")) {
        const fresh = page.getElementById(part.id);
        if (!fresh) continue;
        // What the person opened (a <details> with an id) stays open across the swap.
        for (const open of part.querySelectorAll("details[open][id]")) {
          const same = fresh.querySelector("#" + CSS.escape(open.id));
          if (same) same.open = true;
        }
        part.replaceWith(document.importNode(fresh, true));
      }
      stamp.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      stamp.textContent = "not updated (" + err.message + "); retrying";
    }
    setTimeout(refresh, every);
  }
  if (document.querySelector("[data-live]")) setTimeout(refresh, every);

  // The confirmation panel's button: a JSON POST to the API's command route (a cross-site form cannot send
  // one), which checks the token and the permission as for any other client.
  const send = document.getElementById("confirm-send");
  if (!send) return;
  send.addEventListener("click", async function () {
    const out = document.getElementById("confirm-result");
    const body = JSON.parse(send.dataset.body);
    const reason = document.getElementById("confirm-reason").value.trim();
    if (reason) body.reason = reason;
    send.disabled = true;
    out.textContent = "sending …";
    try {
      const response = await fetch(send.dataset.url, {method: "POST", body: JSON.stringify(body),
                                                      headers: {"Content-Type": "application/json"}});
      const data = await response.json().catch(function () { return null; });
      if (response.ok) {
        out.textContent = "done: " + (data.results || []).map(function (r) {
          return (r.rollout_id || r.release_id) + " " + r.decision + " (" + r.state + ")";
        }).join("; ");
      } else {
        out.textContent = "refused: " + ((data && data.error && data.error.message) || "HTTP " + response.status);
        send.disabled = false;
      }
    } catch (err) {
      out.textContent = "could not send (" + err.message + "); nothing was changed by this page";
      send.disabled = false;
    }
  });
})();
