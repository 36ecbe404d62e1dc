// The patient tracking page: the snapshot, then live updates over a
// WebSocket, with reconnection and backoff. No third-party code.
"use strict";
(function () {
  const token = location.pathname.split("/").pop() || "";
  const $ = (id) => document.getElementById(id);
  const LABELS = {
    scheduled: "Scheduled",
    en_route: "On the way",
    approaching: "Almost there",
    arrived: "The driver has arrived",
    delivered: "Delivered",
    failed: "Delivery could not be completed",
    cancelled: "Cancelled",
  };
  const time = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  // How far along each status is: steps done (picked up, on the way,
  // almost there, delivered) and the current one.
  const STEP = { scheduled: 0, en_route: 1, approaching: 2, arrived: 3, delivered: 4 };
  const NEXT = {
    scheduled: "Your order is being prepared. The expected time appears once it leaves the pharmacy.",
    en_route: "Your order is on its way.",
    approaching: "The driver is a few minutes away.",
    arrived: "The driver is at your door.",
    delivered: "",
    failed: "The pharmacy will contact you.",
    cancelled: "The pharmacy will contact you.",
  };
  const QUIET = "The driver's position is updating. Your order is still on its way; the expected time returns as soon as the driver's app reports again.";

  function progress(status) {
    const step = STEP[status];
    const items = document.querySelectorAll("#progress li");
    $("progress").hidden = step === undefined;
    items.forEach((li, i) => {
      const done = step !== undefined && (i < step || (i === 3 && step === 4));
      li.className = done ? "done" : i === step ? "current" : "";
      if (i === step && step < 4) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
      li.dataset.done = done ? "yes" : "no";
    });
  }
  let attempt = 0;
  let finished = false;

  function render(s) {
    const status = $("status");
    const label = LABELS[s.status] || s.status;
    if (status.textContent !== label) status.textContent = label;
    status.dataset.status = s.status;
    $("eta").textContent = s.eta ? time(s.eta.from) + " – " + time(s.eta.to) : s.updating ? "Updating…" : "—";
    $("stops").textContent =
      s.stops_before === undefined || s.stops_before === null ? "—" : s.stops_before === 0 ? "None: you are next" : String(s.stops_before);
    if (s.display_name) {
      $("from").textContent = "From " + s.display_name;
      $("from").hidden = false;
    }
    progress(s.status);
    $("next").textContent = s.updating ? QUIET : NEXT[s.status] || "";
    $("updated").textContent = s.updated_at ? "Last updated " + time(s.updated_at) : "";
    $("note").textContent = "";
  }

  function gone() {
    finished = true;
    const status = $("status");
    status.textContent = "This tracking link is no longer valid";
    status.dataset.status = "gone";
    $("eta").textContent = "—";
    $("stops").textContent = "—";
    $("next").textContent = "";
    $("progress").hidden = true;
  }

  function connect() {
    if (finished) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(scheme + "://" + location.host + "/v1/track/" + encodeURIComponent(token) + "/ws");
    ws.onopen = () => { attempt = 0; };
    ws.onmessage = (e) => {
      try { render(JSON.parse(e.data)); } catch (_) { /* ignore a malformed message */ }
    };
    ws.onclose = (e) => {
      if (e.code === 4404) return gone();
      attempt += 1;
      const delay = Math.min(30000, 1000 * 2 ** Math.min(attempt, 5)) * (0.75 + Math.random() * 0.5);
      $("note").textContent = "Reconnecting…";
      setTimeout(start, delay);
    };
  }

  function start() {
    fetch("/v1/track/" + encodeURIComponent(token), { cache: "no-store", referrerPolicy: "no-referrer" })
      .then((r) => {
        if (r.status === 404) return gone();
        if (!r.ok) throw new Error("status " + r.status);
        return r.json().then((s) => { render(s); connect(); });
      })
      .catch(() => {
        attempt += 1;
        $("note").textContent = "Reconnecting…";
        setTimeout(start, Math.min(30000, 1000 * 2 ** Math.min(attempt, 5)));
      });
  }

  start();
})();
