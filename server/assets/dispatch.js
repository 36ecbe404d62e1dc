// The dispatcher's live map: drivers, fences, next stops and the event feed,
// drawn on a canvas with no external tiles. The token stays in this tab's
// memory only and travels as a WebSocket subprotocol, never in a URL.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  const drivers = new Map();
  const deliveries = new Map();
  let ws = null;
  let token = "";
  let attempt = 0;

  function bounds() {
    const pts = [];
    drivers.forEach((d) => pts.push([d.lat, d.lng]));
    deliveries.forEach((d) => {
      for (const f of [d.pickup, d.dropoff]) {
        if (f && f.lat !== undefined) pts.push([f.lat, f.lng]);
        if (f && f.polygon) f.polygon.forEach((p) => pts.push(p));
      }
    });
    if (!pts.length) return null;
    let [s, w, n, e] = [90, 180, -90, -180];
    pts.forEach(([la, lo]) => { s = Math.min(s, la); n = Math.max(n, la); w = Math.min(w, lo); e = Math.max(e, lo); });
    const pad = 0.002;
    return { s: s - pad, w: w - pad, n: n + pad, e: e + pad };
  }

  function draw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const b = bounds();
    if (!b) return;
    const k = Math.cos(((b.s + b.n) / 2) * Math.PI / 180);
    const scale = Math.min(canvas.width / ((b.e - b.w) * k), canvas.height / (b.n - b.s));
    const xy = (la, lo) => [(lo - b.w) * k * scale, canvas.height - (la - b.s) * scale];
    deliveries.forEach((d) => {
      [["pickup", "#2f6fd6"], ["dropoff", "#d6672f"]].forEach(([name, colour]) => {
        const f = d[name];
        if (!f) return;
        ctx.strokeStyle = colour;
        ctx.lineWidth = 2;
        ctx.beginPath();
        if (f.polygon) {
          f.polygon.forEach(([la, lo], i) => { const [x, y] = xy(la, lo); if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
          ctx.closePath();
        } else {
          const [x, y] = xy(f.lat, f.lng);
          ctx.arc(x, y, Math.max(3, (f.radius_m || 20) / 111195 * scale), 0, 2 * Math.PI);
        }
        ctx.stroke();
      });
      const drv = d.driver_id && drivers.get(d.driver_id);
      if (drv && d.stop === 0 && d.dropoff && d.dropoff.lat !== undefined) {
        ctx.setLineDash([6, 4]);
        ctx.strokeStyle = "#888";
        ctx.beginPath();
        ctx.moveTo(...xy(drv.lat, drv.lng));
        ctx.lineTo(...xy(d.dropoff.lat, d.dropoff.lng));
        ctx.stroke();
        ctx.setLineDash([]);
      }
    });
    drivers.forEach((d) => {
      const [x, y] = xy(d.lat, d.lng);
      ctx.fillStyle = "#0b2d5c";
      ctx.beginPath();
      ctx.arc(x, y, 7, 0, 2 * Math.PI);
      ctx.fill();
      ctx.fillStyle = "#000";
      ctx.font = "12px system-ui, sans-serif";
      ctx.fillText(d.driver_id, x + 9, y - 9);
    });
  }

  function listDrivers() {
    $("driver-count").textContent = String(drivers.size);
    const ul = $("drivers");
    ul.replaceChildren(...[...drivers.values()].map((d) => {
      const li = document.createElement("li");
      li.textContent = d.driver_id + " · " + new Date(d.ts).toLocaleTimeString();
      li.dataset.driver = d.driver_id;
      return li;
    }));
  }

  function addEvent(e) {
    const li = document.createElement("li");
    li.textContent = new Date(e.at).toLocaleTimeString() + " " + e.kind + (e.delivery_id ? " " + e.delivery_id : "");
    const ol = $("events");
    ol.prepend(li);
    while (ol.children.length > 200) ol.lastChild.remove();
  }

  function onMessage(m) {
    if (m.type === "snapshot") {
      drivers.clear();
      deliveries.clear();
      (m.drivers || []).forEach((d) => drivers.set(d.driver_id, d));
      (m.deliveries || []).forEach((d) => deliveries.set(d.id, d));
    } else if (m.type === "drivers" || m.type === "driver") {
      (m.drivers || [m]).forEach((d) => drivers.set(d.driver_id, d));
    } else if (m.type === "delivery") {
      const d = deliveries.get(m.id) || { id: m.id };
      Object.assign(d, m);
      if (["delivered", "failed", "cancelled"].includes(m.status)) deliveries.delete(m.id); else deliveries.set(m.id, d);
    } else if (m.type === "event") {
      addEvent(m);
    }
    listDrivers();
    draw();
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(scheme + "://" + location.host + "/v1/dispatch/ws", ["rxtrack.v1", "bearer." + token]);
    $("state").textContent = "Connecting…";
    ws.onopen = () => { attempt = 0; $("state").textContent = "Live"; };
    ws.onmessage = (e) => { try { onMessage(JSON.parse(e.data)); } catch (_) { /* ignore */ } };
    ws.onclose = (e) => {
      if (e.code === 4001 || e.code === 4003) {
        $("state").textContent = e.code === 4001 ? "Token invalid or expired" : "This token may not see the map";
        return;
      }
      attempt += 1;
      const delay = Math.min(30000, 1000 * 2 ** Math.min(attempt, 5));
      $("state").textContent = "Reconnecting…";
      setTimeout(connect, delay);
    };
  }

  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    if (ws) ws.close();
    if (token) connect();
  });
})();
