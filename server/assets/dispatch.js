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

  const tileMeta = document.querySelector('meta[name="rxtrack-tiles"]');
  const tileTemplate = tileMeta ? tileMeta.content : "";
  const tiles = new Map();

  // Web Mercator, in units of the whole world (0..1), as raster tiles use.
  const mx = (lng) => (lng + 180) / 360;
  const my = (lat) => {
    const s = Math.sin((lat * Math.PI) / 180);
    return 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI);
  };

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

  function drawTiles(x0, y0, scale) {
    if (!tileTemplate) return;
    const z = Math.max(0, Math.min(19, Math.round(Math.log2(scale / 256))));
    const n = 2 ** z;
    const size = scale / n;
    for (let tx = Math.floor(x0 * n); tx <= Math.floor((x0 + canvas.width / scale) * n); tx++) {
      for (let ty = Math.floor(y0 * n); ty <= Math.floor((y0 + canvas.height / scale) * n); ty++) {
        const url = tileTemplate.replace("{z}", z).replace("{x}", tx).replace("{y}", ty);
        let img = tiles.get(url);
        if (!img) {
          img = new Image();
          img.crossOrigin = "anonymous";
          img.onload = draw;
          img.src = url;
          tiles.set(url, img);
        }
        if (img.complete && img.naturalWidth) ctx.drawImage(img, (tx / n - x0) * scale, (ty / n - y0) * scale, size, size);
      }
    }
  }

  function draw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const b = bounds();
    if (!b) return;
    const x0 = mx(b.w);
    const y0 = my(b.n);
    const scale = Math.min(canvas.width / (mx(b.e) - x0), canvas.height / (my(b.s) - y0));
    const xy = (la, lo) => [(mx(lo) - x0) * scale, (my(la) - y0) * scale];
    const px = (metres, la) => (metres / (40075016.686 * Math.cos((la * Math.PI) / 180))) * scale;
    drawTiles(x0, y0, scale);
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
          ctx.arc(x, y, Math.max(3, px(f.radius_m || 20, f.lat)), 0, 2 * Math.PI);
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
