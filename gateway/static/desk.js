// The desk's page: one EventSource to /api/stream, a snapshot on connect, then deltas.
// No framework and no build step; every string the page shows is in STRINGS.
"use strict";

const STRINGS = {
  vi: {
    title: "Kiểm tra lối vào",
    sound_off: "Âm thanh đang tắt, chạm vào màn hình để bật",
    connecting: "Đang kết nối…",
    live: "Trực tiếp",
    lost: "Mất kết nối, đang kết nối lại…",
    idle_title: "Mời đưa điện thoại lại gần thiết bị",
    idle_detail: "Màn hình chuyển sang màu xanh nếu Bluezone đang bật",
    reading_title: "Đã thấy iPhone, đang đọc mã…",
    reading_detail: "Xin giữ điện thoại gần thiết bị",
    bluezone_title: "Đã bật Bluezone",
    unread_title: "Chưa đọc được mã Bluezone",
    unread_detail: "Đề nghị mở ứng dụng Bluezone rồi thử lại",
    other_title: "Không phải Bluezone",
    other_app: "ứng dụng khác",
    id: "mã {id}",
    inside: "Trong khu vực",
    bluezone_devices: "điện thoại có Bluezone",
    ids_on_air: "{n} mã đang phát",
    entries: "Vào",
    exits: "Ra",
    last_hour: "1 giờ qua",
    today: "Hôm nay",
    other_apps: "Ứng dụng khác trong khu vực",
    recent: "Sự kiện gần đây",
    no_events: "Chưa có sự kiện nào",
    entry: "Vào",
    exit: "Ra",
    checked_in: "đã check-in",
    stayed: "ở lại {d}",
    seconds: "{n} giây",
    minutes: "{n} phút",
    hours: "{h} giờ {m} phút",
    scanner: "Máy quét",
    sync: "Đồng bộ",
    clock: "Đồng hồ",
    disk: "Ổ đĩa",
    scanning: "đang quét",
    recovering: "đang khôi phục",
    starting: "đang khởi động",
    simulated: "mô phỏng",
    sync_ok: "đã kết nối",
    sync_warn: "mất kết nối máy chủ",
    sync_off: "tắt",
    outbox: "chờ gửi {n}",
    clock_ok: "đã đồng bộ",
    clock_warn: "chưa đồng bộ",
    disk_free: "còn trống {v}",
    ios: "iPhone",
    android: "Android",
  },
  en: {
    title: "Entrance check",
    sound_off: "Sound is off, tap the screen to turn it on",
    connecting: "Connecting…",
    live: "Live",
    lost: "Connection lost, reconnecting…",
    idle_title: "Hold the phone close to the gateway",
    idle_detail: "The screen turns green if Bluezone is running",
    reading_title: "iPhone found, reading ID…",
    reading_detail: "Please keep the phone close",
    bluezone_title: "Bluezone is on",
    unread_title: "Bluezone ID not read",
    unread_detail: "Ask them to open the Bluezone app and try again",
    other_title: "Not Bluezone",
    other_app: "another app",
    id: "ID {id}",
    inside: "Inside the zone",
    bluezone_devices: "phones with Bluezone",
    ids_on_air: "{n} IDs on air",
    entries: "In",
    exits: "Out",
    last_hour: "Last hour",
    today: "Today",
    other_apps: "Other apps inside",
    recent: "Recent events",
    no_events: "No events yet",
    entry: "In",
    exit: "Out",
    checked_in: "checked in",
    stayed: "stayed {d}",
    seconds: "{n} s",
    minutes: "{n} min",
    hours: "{h} h {m} min",
    scanner: "Scanner",
    sync: "Sync",
    clock: "Clock",
    disk: "Disk",
    scanning: "scanning",
    recovering: "recovering",
    starting: "starting",
    simulated: "simulated",
    sync_ok: "connected",
    sync_warn: "broker unreachable",
    sync_off: "off",
    outbox: "{n} waiting",
    clock_ok: "synchronised",
    clock_warn: "not synchronised",
    disk_free: "{v} free",
    ios: "iPhone",
    android: "Android",
  },
};
const APPS = { bluezone: "Bluezone", gaen: "GAEN", bluetrace: "BlueTrace" };
const LIST_MAX = 40;
const STALE_MS = 20000; // the server sends a status every 5 s: 20 s of silence is a dead link
const READING_GRACE_MS = 2000; // the server's "not read" may arrive just after the page's timer

const model = { panel: { state: "idle", n: 0 }, counts: null, recent: [], health: null, where: "" };
let lang = pickLanguage();
let source = null;
let panelTimer = null;
let lastMessage = 0;
let beepedN = 0;
let audio = null;

const $ = (id) => document.getElementById(id);

function pickLanguage() {
  let saved = null;
  try {
    saved = window.localStorage.getItem("bzgw.lang");
  } catch (_) {
    // storage may be disabled: fall back to the gateway's language
  }
  const fallback = document.documentElement.dataset.defaultLang;
  return STRINGS[saved] ? saved : STRINGS[fallback] ? fallback : "vi";
}

function t(key, values) {
  let text = STRINGS[lang][key] ?? key;
  for (const [name, value] of Object.entries(values || {})) text = text.replace(`{${name}}`, value);
  return text;
}

const number = (n) => new Intl.NumberFormat(lang === "vi" ? "vi-VN" : "en-GB").format(n);

function timeOfDay(iso) {
  return new Date(iso).toLocaleTimeString(lang === "vi" ? "vi-VN" : "en-GB", {
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
}

function duration(seconds) {
  if (seconds < 60) return t("seconds", { n: Math.round(seconds) });
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return t("minutes", { n: minutes });
  return t("hours", { h: Math.floor(minutes / 60), m: minutes % 60 });
}

function setLanguage(next) {
  lang = next;
  try {
    window.localStorage.setItem("bzgw.lang", next);
  } catch (_) {
    // not remembered; the switch still applies to this page
  }
  renderAll();
}

// Rendering

function renderAll() {
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  for (const button of document.querySelectorAll(".lang button")) {
    button.setAttribute("aria-pressed", String(button.dataset.lang === lang));
  }
  $("where").textContent = model.where;
  renderConnection($("conn").dataset.state);
  renderPanel(model.panel, false);
  renderCounts();
  renderList();
  renderHealth();
  renderClock();
}

function renderConnection(state) {
  $("conn").dataset.state = state;
  $("conn-text").textContent = t(state);
}

function renderPanel(panel, fresh) {
  const el = $("panel");
  const state = panel.state;
  el.dataset.state = state;
  let lines;
  if (state === "idle" || state === "reading") {
    lines = [t(`${state}_detail`)];
  } else {
    const app = APPS[panel.app] || panel.app;
    const first = panel.platform ? [t(panel.platform)] : [];
    if (state === "other") first.unshift(`${app} (${t("other_app")})`);
    first.push(timeOfDay(panel.ts));
    lines = [first.join(" · ")];
    if (panel.id_short) lines.push(t("id", { id: panel.id_short }));
    if (state === "unread") lines.push(t("unread_detail"));
  }
  $("panel-title").textContent = t(`${state}_title`);
  $("panel-detail").replaceChildren(
    ...lines.map((text) => {
      const line = document.createElement("div");
      line.textContent = text;
      return line;
    }),
  );
  if (fresh) {
    el.classList.remove("fresh");
    void el.offsetWidth; // restart the animation
    el.classList.add("fresh");
  }
}

function showPanel(panel, live) {
  model.panel = panel;
  clearTimeout(panelTimer);
  renderPanel(panel, live && panel.state !== "idle");
  if (panel.state !== "idle") {
    const grace = panel.state === "reading" ? READING_GRACE_MS : 0;
    panelTimer = setTimeout(() => {
      model.panel = { state: "idle", n: panel.n };
      renderPanel(model.panel, false);
    }, panel.remaining_s * 1000 + grace);
  }
  if (live && panel.n > beepedN && panel.state !== "idle" && panel.state !== "reading") {
    beepedN = panel.n;
    beep(panel.state === "bluezone");
  }
}

function renderCounts() {
  const counts = model.counts;
  if (!counts) return;
  const bz = counts.bluezone;
  $("n-present").textContent = number(bz.present);
  // A phone rotating its ID is heard under both for a moment: people, and IDs beside them.
  $("n-ids").textContent = bz.ids === bz.present ? "" : t("ids_on_air", { n: number(bz.ids) });
  $("n-in-hour").textContent = number(bz.hour.entry);
  $("n-out-hour").textContent = number(bz.hour.exit);
  $("n-in-today").textContent = number(bz.today.entry);
  $("n-out-today").textContent = number(bz.today.exit);
  $("n-gaen").textContent = number(counts.gaen.present);
  $("n-bluetrace").textContent = number(counts.bluetrace.present);
}

function eventRow(event) {
  const li = document.createElement("li");
  li.dataset.seq = event.seq;
  const cell = (className, text) => {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    return span;
  };
  const who = cell("who", "");
  who.append(cell(`app-${event.app}`, APPS[event.app] || event.app));
  if (event.platform) who.append(` · ${t(event.platform)}`);
  li.append(
    cell("t", timeOfDay(event.ts).slice(0, 5)),
    cell(`k ${event.type}`, t(event.type)),
    who,
    cell("id", event.id_short || ""),
  );
  // Exits say how long the visit lasted, on a second line: the first stays readable.
  const more = [];
  if (event.type === "exit" && event.dwell_s != null) more.push(t("stayed", { d: duration(event.dwell_s) }));
  if (event.checked_in) more.push(`✓ ${t("checked_in")}`);
  if (more.length) li.append(cell("more", more.join(" · ")));
  return li;
}

function renderList() {
  const list = $("events");
  list.replaceChildren(...model.recent.slice(0, LIST_MAX).map(eventRow));
  $("events-empty").hidden = model.recent.length > 0;
}

function addEvents(events) {
  const list = $("events");
  for (const event of events) {
    model.recent.unshift(event);
    const row = eventRow(event);
    row.classList.add("new");
    list.prepend(row);
  }
  model.recent.length = Math.min(model.recent.length, LIST_MAX);
  while (list.children.length > LIST_MAX) list.lastElementChild.remove();
  $("events-empty").hidden = model.recent.length > 0;
}

function renderHealth() {
  const health = model.health;
  if (!health) return;
  const set = (id, level, text) => {
    $(id).dataset.level = level;
    $(id).querySelector(".v").textContent = text;
  };
  const scanner = health.scanner;
  set("h-scanner", scanner.level, `${t(scanner.state)} · ${scanner.adapters.join(", ")}`);
  const sync = health.sync;
  // Without a broker nothing leaves the outbox: its depth means nothing then.
  const outbox = sync.level !== "off" && sync.outbox ? ` · ${t("outbox", { n: number(sync.outbox) })}` : "";
  set("h-sync", sync.level, t(`sync_${sync.level}`) + outbox);
  set("h-clock", health.clock.level, t(`clock_${health.clock.level}`));
  const free = health.disk.free_mb;
  const size = free == null ? "?" : free >= 1024 ? `${number(Math.round(free / 102.4) / 10)} GB` : `${number(Math.round(free))} MB`;
  set("h-disk", health.disk.level, t("disk_free", { v: size }));
}

function renderClock() {
  $("clock").textContent = new Date().toLocaleTimeString(lang === "vi" ? "vi-VN" : "en-GB", {
    hour: "2-digit", minute: "2-digit", hour12: false,
  });
}

// Sound: a short tone made by WebAudio, so no audio file is needed. Browsers start audio
// only after a user gesture, unless started with --autoplay-policy=no-user-gesture-required
// (the kiosk does): until then the header says sound is off and a tap turns it on.

function unlockAudio() {
  if (!audio) {
    try {
      audio = new AudioContext();
    } catch (_) {
      return;
    }
  }
  if (audio.state === "suspended") audio.resume().catch(() => {});
  $("sound").hidden = audio.state === "running";
}

function beep(good) {
  document.body.dataset.beeps = String(Number(document.body.dataset.beeps || 0) + 1);
  if (!audio) return;
  if (audio.state !== "running") {
    $("sound").hidden = false;
    return;
  }
  let at = audio.currentTime;
  for (const frequency of good ? [880, 1318.5] : [330, 262]) {
    const oscillator = audio.createOscillator();
    const gain = audio.createGain();
    oscillator.frequency.value = frequency;
    gain.gain.setValueAtTime(0.0001, at);
    gain.gain.exponentialRampToValueAtTime(0.5, at + 0.015);
    gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.16);
    oscillator.connect(gain).connect(audio.destination);
    oscillator.start(at);
    oscillator.stop(at + 0.17);
    at += 0.17;
  }
}

// The stream

function connect() {
  if (source) source.close();
  renderConnection("connecting");
  source = new EventSource("/api/stream");
  lastMessage = Date.now();
  const on = (name, handler) =>
    source.addEventListener(name, (message) => {
      lastMessage = Date.now();
      renderConnection("live");
      handler(JSON.parse(message.data));
    });
  on("snapshot", (snap) => {
    model.where = `${snap.site} · ${snap.gateway}`;
    model.counts = snap.counts;
    model.recent = snap.recent;
    model.health = snap.health;
    beepedN = Math.max(beepedN, snap.panel.n);
    renderAll();
    showPanel(snap.panel, false);
  });
  on("panel", (panel) => showPanel(panel, true));
  on("events", (delta) => {
    addEvents(delta.events);
    model.counts = delta.counts;
    renderCounts();
  });
  on("status", (status) => {
    model.counts = status.counts;
    model.health = status.health;
    renderCounts();
    renderHealth();
  });
  source.onerror = () => {
    renderConnection("lost");
    // EventSource retries by itself, except after an HTTP error (a 401, a 503): then it
    // gives up, and so must be started again.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  };
}

function watchdog() {
  renderClock();
  // A half-open connection (the gateway rebooted, a cable pulled) never errors: notice the
  // silence and reconnect.
  if (Date.now() - lastMessage > STALE_MS) {
    renderConnection("lost");
    connect();
  }
}

function start() {
  for (const button of document.querySelectorAll(".lang button")) {
    button.addEventListener("click", () => setLanguage(button.dataset.lang));
  }
  for (const name of ["pointerdown", "keydown"]) document.addEventListener(name, unlockAudio);
  renderAll();
  unlockAudio();
  connect();
  setInterval(watchdog, 1000);
}

start();
