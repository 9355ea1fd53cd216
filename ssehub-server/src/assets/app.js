// The live board: one EventSource on /events?pattern=price:*, stats polled from /stats.
// No framework and no network beyond this server.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const board = $("board");
  const quotes = new Map(); // symbol -> card state
  const SPARK_POINTS = 60;
  const throughput = []; // events/s, one per stats poll
  let filter = "all";
  let search = "";
  let demo = null; // from /stats: whether the server runs the demo feed
  let opens = 0;
  let received = 0;
  const perSymbol = new Map(); // symbol -> updates received
  let pace = "0"; // this page's pace: "0" (every update), "250ms" or "1s"
  let session = ""; // the stream's session token, from its `connected` event
  let paceOfStream = "0"; // the pace the open stream was last set to
  let resets = 0;
  let lastId = "";
  let source = null;

  // ---- formatting -------------------------------------------------------------------------
  const formats = new Map();
  function fmt(value, digits) {
    let f = formats.get(digits);
    if (!f) {
      f = new Intl.NumberFormat("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
      formats.set(digits, f);
    }
    return f.format(value);
  }
  const priceDigits = (p) => (p >= 1 ? 2 : p >= 0.01 ? 4 : 6);
  const fmtPrice = (p) => fmt(p, priceDigits(Math.abs(p)));
  const fmtCount = (n) => fmt(n, 0);
  function fmtUptime(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }

  // ---- cards ------------------------------------------------------------------------------
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function ensure(info) {
    let q = quotes.get(info.symbol);
    if (q) return q;
    const card = el("article", "card");
    card.dataset.symbol = info.symbol;
    const head = el("div", "head");
    head.append(el("span", "sym", info.symbol), el("span", "name", info.name || ""));
    const kind = el("span", "kind", info.kind || "price");
    const price = el("div", "price", "-");
    const chg = el("div", "chg flat", "0.00%");
    const canvas = el("canvas");
    canvas.setAttribute("aria-hidden", "true");
    card.append(head, kind, price, chg, canvas);
    board.append(card);
    q = {
      symbol: info.symbol, name: info.name || "", kind: info.kind || "other",
      card, priceEl: price, chgEl: chg, canvas,
      open: typeof info.open === "number" ? info.open : null, price: null, pct: 0, recent: [],
    };
    quotes.set(info.symbol, q);
    applyFilter(q);
    updateEmpty();
    return q;
  }

  function update(q, info, flash) {
    const price = Number(info.price);
    if (!Number.isFinite(price)) return;
    if (q.open === null) q.open = typeof info.open === "number" ? info.open : price;
    const before = q.price;
    q.price = price;
    q.pct = typeof info.change_pct === "number" ? info.change_pct : q.open ? (price / q.open - 1) * 100 : 0;
    q.priceEl.textContent = fmtPrice(price);
    q.chgEl.textContent = `${q.pct > 0 ? "+" : q.pct < 0 ? "−" : ""}${fmt(Math.abs(q.pct), 2)}%`;
    q.chgEl.className = `chg ${q.pct > 0.005 ? "up" : q.pct < -0.005 ? "down" : "flat"}`;
    q.recent.push(price);
    if (q.recent.length > SPARK_POINTS) q.recent.shift();
    if (flash && before !== null && before !== price) {
      q.card.classList.remove("flash-up", "flash-down");
      void q.card.offsetWidth; // restart the animation
      q.card.classList.add(price > before ? "flash-up" : "flash-down");
    }
    drawSpark(q);
  }

  function drawSpark(q) {
    const canvas = q.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
    if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const pts = q.recent;
    if (pts.length < 2) return;
    let lo = Math.min(...pts), hi = Math.max(...pts);
    if (q.open !== null) { lo = Math.min(lo, q.open); hi = Math.max(hi, q.open); }
    const span = hi - lo || 1;
    const x = (i) => 1 + (i / (pts.length - 1)) * (w - 6);
    const y = (v) => h - 3 - ((v - lo) / span) * (h - 6);
    const up = q.open === null ? pts[pts.length - 1] >= pts[0] : pts[pts.length - 1] >= q.open;
    const color = up ? "52, 211, 153" : "248, 113, 113";
    if (q.open !== null) { // the open, dashed
      ctx.strokeStyle = "rgba(139, 152, 179, .35)";
      ctx.setLineDash([2, 3]);
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(0, Math.round(y(q.open)) + 0.5);
      ctx.lineTo(w, Math.round(y(q.open)) + 0.5);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.beginPath();
    pts.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.strokeStyle = `rgb(${color})`;
    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    ctx.stroke();
    ctx.lineTo(x(pts.length - 1), h);
    ctx.lineTo(x(0), h);
    ctx.closePath();
    const fill = ctx.createLinearGradient(0, 0, 0, h);
    fill.addColorStop(0, `rgba(${color}, .28)`);
    fill.addColorStop(1, `rgba(${color}, 0)`);
    ctx.fillStyle = fill;
    ctx.fill();
    const last = pts.length - 1;
    ctx.beginPath();
    ctx.arc(x(last), y(pts[last]), 2.2, 0, Math.PI * 2);
    ctx.fillStyle = `rgb(${color})`;
    ctx.fill();
  }

  // ---- filters ----------------------------------------------------------------------------
  function applyFilter(q) {
    const kindOk = filter === "all" || q.kind === filter;
    const text = `${q.symbol} ${q.name}`.toLowerCase();
    q.card.hidden = !(kindOk && (!search || text.includes(search)));
  }
  document.querySelectorAll("button[data-filter]").forEach((button) => {
    button.addEventListener("click", () => {
      filter = button.dataset.filter;
      document.querySelectorAll("button[data-filter]").forEach((b) => {
        b.classList.toggle("on", b === button);
        b.setAttribute("aria-selected", String(b === button));
      });
      quotes.forEach(applyFilter);
      quotes.forEach(drawSpark);
    });
  });
  $("search").addEventListener("input", (e) => {
    search = e.target.value.trim().toLowerCase();
    quotes.forEach(applyFilter);
    quotes.forEach(drawSpark);
  });
  window.addEventListener("resize", () => quotes.forEach(drawSpark));

  function renderMovers() {
    const list = [...quotes.values()].filter((q) => q.price !== null);
    const movers = $("movers");
    movers.replaceChildren();
    if (list.length < 4) return;
    const up = list.filter((q) => q.pct > 0.005).length;
    const down = list.filter((q) => q.pct < -0.005).length;
    const breadth = el("span", "breadth");
    breadth.append(el("b", "up", `▲ ${up}`), el("b", "down", `▼ ${down}`));
    movers.append(el("span", "movers-label", "Movers"));
    list.sort((a, b) => b.pct - a.pct);
    for (const q of [list[0], list[1], list[list.length - 2], list[list.length - 1]]) {
      const chip = el("span", "mover");
      const pct = el("span", `chg ${q.pct >= 0 ? "up" : "down"}`, `${q.pct >= 0 ? "+" : "−"}${fmt(Math.abs(q.pct), 2)}%`);
      chip.append(el("b", "", q.symbol), pct);
      movers.append(chip);
    }
    movers.append(breadth);
  }

  // ---- the empty state --------------------------------------------------------------------
  function updateEmpty() {
    $("empty").hidden = quotes.size > 0 || demo !== false;
  }
  $("empty-curl").textContent =
    `curl -X POST 'http://${location.host}/publish?topic=price:ACME' \\\n` +
    `  -d '{"event": "price", "data": "{\\"symbol\\": \\"ACME\\", \\"price\\": 12.34}"}'`;

  function toast(text) {
    const t = $("toast");
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (t.hidden = true), 4000);
  }

  // ---- the stream -------------------------------------------------------------------------
  function setState(state, text) {
    document.body.dataset.state = state;
    $("status-text").textContent = text;
  }

  function onPrice(e) {
    let info;
    try { info = JSON.parse(e.data); } catch { return; }
    if (!info || typeof info.symbol !== "string" || !info.symbol) return;
    received++;
    perSymbol.set(info.symbol, (perSymbol.get(info.symbol) || 0) + 1);
    if (e.lastEventId) {
      lastId = e.lastEventId;
      $("last-id").textContent = lastId;
      $("last-id").title = lastId;
    }
    update(ensure(info), info, true);
  }

  // ---- the pace ---------------------------------------------------------------------------
  // One connection for every pace: a change goes to POST /subscription with the stream's
  // session token, and the hub switches the open stream (a rate tier: per symbol at most one
  // update per interval, the latest). A stream that reconnected by itself resumes its session,
  // which remembers the pace; one opened anew is set again once it says it is connected.
  let setting = false;
  async function setPace() {
    if (setting || !session || pace === paceOfStream) return;
    setting = true;
    const wanted = pace;
    const token = session;
    let ok = false;
    try {
      const response = await fetch("/subscription?session=" + encodeURIComponent(token), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ interval: wanted }),
      });
      ok = response.ok;
      if (ok && token === session) paceOfStream = wanted;
      if (!ok) toast(`The hub refused the pace: ${response.status} ${await response.text()}`);
    } catch { /* the stream's reconnect sets it again */ }
    setting = false;
    // Clicked again meanwhile, or a new session since: once more.
    if (ok && pace !== paceOfStream) setPace();
  }
  document.querySelectorAll("button[data-pace]").forEach((button) => {
    button.addEventListener("click", () => {
      pace = button.dataset.pace;
      document.querySelectorAll("button[data-pace]").forEach((b) => {
        b.classList.toggle("on", b === button);
        b.setAttribute("aria-checked", String(b === button));
      });
      setPace();
    });
  });
  let receivedAtLastSecond = 0;
  function tickPageRate() {
    $("page-rate").textContent = fmtCount(received - receivedAtLastSecond);
    receivedAtLastSecond = received;
  }

  function connect() {
    // snapshot=1: the stream starts with every symbol's latest quote (each price is published
    // keyed by its symbol), so the board fills at once; a resume the hub can serve exactly
    // gets its replay instead, and one it cannot gets the snapshot rather than a reset.
    let url = "/events?pattern=" + encodeURIComponent("price:*") + "&snapshot=1";
    // Only a brand-new EventSource needs the query parameter: the browser's own reconnects
    // send the Last-Event-ID header.
    if (lastId) url += "&lastEventId=" + encodeURIComponent(lastId);
    source = new EventSource(url);
    setState("connecting", opens ? "Reconnecting" : "Connecting");
    source.onopen = () => {
      opens++;
      $("reconnects").textContent = String(opens - 1);
      setState("live", "Live");
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (e.g. 503 when full): the browser gives up, so we retry ourselves.
        setState("offline", "Offline");
        source.close();
        setTimeout(connect, 3000 + Math.random() * 2000);
      } else {
        setState("connecting", "Reconnecting");
      }
    };
    source.addEventListener("connected", (e) => {
      let info = {};
      try { info = JSON.parse(e.data); } catch { /* keep it empty */ }
      // A new session starts at the URL's pace; a resumed one keeps the pace it was set to.
      if (info.session && info.session !== session) paceOfStream = "0";
      session = info.session || "";
      setPace();
    });
    source.addEventListener("price", onPrice);
    source.addEventListener("message", onPrice); // prices published without an event name
    source.addEventListener("reset", (e) => {
      resets++;
      let reason = "";
      try { reason = JSON.parse(e.data).reason; } catch { /* keep it empty */ }
      toast(`Resynchronised with the hub${reason ? ` (${reason})` : ""}`);
      if (demo) loadSnapshot();
    });
    source.addEventListener("snapshot", (e) => {
      let info = {};
      try { info = JSON.parse(e.data); } catch { /* keep it empty */ }
      if (info.state === "begin" && info.reason) {
        toast(`Resynchronised from the hub's snapshot (${info.reason})`);
      }
    });
    source.addEventListener("lagged", (e) => toast(`Fell behind: ${e.data} updates skipped`));
  }

  async function loadSnapshot() {
    try {
      const response = await fetch("/demo/market", { cache: "no-store" });
      if (!response.ok) return;
      const snapshot = await response.json();
      // Resuming from the snapshot's last event: the stream replays what happened since.
      if (!source && !lastId && snapshot.last_id) lastId = snapshot.last_id;
      for (const info of snapshot.symbols || []) {
        const q = ensure(info);
        if (Array.isArray(info.recent) && q.price === null) {
          q.recent = info.recent.slice(-SPARK_POINTS - 1, -1);
        }
        if (q.price === null) update(q, info, false);
      }
    } catch { /* the stream fills the board anyway */ }
  }

  // ---- stats ------------------------------------------------------------------------------
  function drawThroughput() {
    const canvas = $("s-chart");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const n = 60, peak = Math.max(1, ...throughput), max = peak * 1.15;
    const bar = w / n;
    ctx.fillStyle = "rgba(139, 152, 179, .18)"; // the baseline: the chart's full width
    ctx.fillRect(0, h - 1, w, 1);
    throughput.forEach((v, i) => {
      const bh = Math.max(1, (v / max) * (h - 2));
      const x = (n - throughput.length + i) * bar;
      ctx.fillStyle = i === throughput.length - 1 ? "rgba(96, 165, 250, .95)" : "rgba(96, 165, 250, .45)";
      ctx.fillRect(x + 0.5, h - bh, Math.max(1, bar - 1.5), bh);
    });
    $("s-peak").textContent = throughput.length ? `peak ${fmt(peak, peak < 100 ? 1 : 0)}/s` : "";
  }

  async function pollStats() {
    try {
      const response = await fetch("/stats", { cache: "no-store" });
      const s = await response.json();
      demo = Boolean(s.demo);
      $("s-subscribers").textContent = fmtCount(s.subscribers);
      $("s-eps").textContent = fmt(s.events_per_second, s.events_per_second < 100 ? 1 : 0);
      $("s-fps").textContent = fmt(s.frames_per_second, s.frames_per_second < 100 ? 1 : 0);
      $("s-published").textContent = fmtCount(s.events_published);
      const drops = s.frames_dropped + s.slow_disconnects;
      $("s-drops").textContent = fmtCount(drops);
      $("s-drops").classList.toggle("bad", drops > 0);
      $("s-uptime").textContent = fmtUptime(s.uptime_seconds);
      throughput.push(s.events_per_second);
      if (throughput.length > 60) throughput.shift();
      drawThroughput();
    } catch { /* the status pill already tells the story */ }
    updateEmpty();
    renderMovers();
  }

  function tickClock() {
    $("clock").textContent = new Date().toLocaleTimeString([], { hour12: false });
  }

  // The board starts from the snapshot (with sparklines), then the stream keeps it live.
  // Stats first: they say whether there is a demo feed to take a snapshot of.
  pollStats()
    .then(() => (demo ? loadSnapshot() : null))
    .finally(connect);
  tickClock();
  setInterval(pollStats, 1000);
  setInterval(tickClock, 1000);
  setInterval(tickPageRate, 1000);
  window.ssehubDemo = {
    received: () => received, opens: () => opens, lastId: () => lastId, resets: () => resets,
    perSymbol: () => Object.fromEntries(perSymbol), pace: () => paceOfStream,
  };
})();
