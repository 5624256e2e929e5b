// The stagefleet dashboard. It reads the fleet live over /ws (the broadcast
// list, the selected broadcast's stages and its fleet events), scrapes
// /metrics every few seconds for rates and percentiles, and charts the
// viewing history from /api/stats/history. The API key, when the server
// wants one, is asked for once and kept in sessionStorage: it goes in the
// x-api-key header and the WebSocket subprotocol, never in a URL, which
// proxies and access logs keep.
'use strict';

(() => {
  const KEY_ITEM = 'stagefleet.apiKey';
  const METRICS_EVERY_MS = 5000;
  // Scrapes kept for the charts, and the window the percentiles are taken over.
  const METRICS_KEEP_S = 15 * 60;
  const QUANTILE_WINDOW_S = 60;
  const HISTORY_EVERY_MS = 15000;
  const HISTORY_SPAN_S = 3 * 3600;
  const HISTORY_STEP_S = 60;
  const MAX_EVENTS = 200;
  const CHART_HEIGHT = 150;
  const CHART_MIN_SPAN_S = 2 * 60;

  const $ = (id) => document.getElementById(id);

  const state = {
    key: sessionStorage.getItem(KEY_ITEM) || '',
    ws: null,
    // Failed connection attempts in a row, for the back-off.
    retries: 0,
    retryTimer: 0,
    // The broadcast shown in detail, kept in the URL's fragment so that a
    // reload or a shared link shows the same one.
    selected: location.hash.startsWith('#broadcast=') ? decodeURIComponent(location.hash.slice(11)) : '',
    // The broadcasts of the last list pushed.
    listed: new Set(),
    // The selected broadcast's last broadcast_update.
    detail: null,
    stageEls: new Map(),
    scrapes: [],
    charts: {},
    metricsTimer: 0,
    scrapeCalls: 0,
    historyTimer: 0,
  };

  // ---- the key and the connection ----

  function authHeaders() {
    return state.key ? { 'x-api-key': state.key } : {};
  }

  // base64url without padding: a subprotocol is an HTTP token, which may
  // not hold '+', '/' or '='.
  function base64url(text) {
    let bin = '';
    for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function setConn(kind, text) {
    const el = $('conn');
    el.dataset.state = kind;
    el.textContent = text;
  }

  function askKey(message) {
    // Nothing is read until a key the server takes is entered.
    clearTimeout(state.metricsTimer);
    clearTimeout(state.historyTimer);
    setConn('key', 'API key needed');
    $('main').hidden = true;
    $('forget-key').hidden = true;
    $('key-form').hidden = false;
    $('key-error').textContent = message;
    $('api-key').focus();
  }

  // start checks the key on a route that needs one, then connects. The
  // check is over HTTP because a browser tells a page nothing about why a
  // WebSocket handshake was refused.
  async function start() {
    clearTimeout(state.retryTimer);
    setConn('connecting', 'connecting…');
    let res;
    try {
      res = await fetch('api/stats', { headers: authHeaders(), cache: 'no-store' });
    } catch {
      retryLater();
      return;
    }
    if (res.status === 401) {
      askKey(state.key ? 'The server refused that key.' : '');
      return;
    }
    if (!res.ok) {
      retryLater();
      return;
    }
    $('key-form').hidden = true;
    $('main').hidden = false;
    $('forget-key').hidden = !state.key;
    connect();
    scrapeMetrics();
    loadHistory();
  }

  function retryLater() {
    const wait = Math.min(15000, 1000 * 2 ** state.retries++);
    setConn('reconnecting', `reconnecting in ${Math.ceil(wait / 1000)} s`);
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(start, wait);
  }

  function connect() {
    const url = new URL('ws', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const protocols = ['stagefleet'];
    if (state.key) protocols.push('stagefleet.key.' + base64url(state.key));
    const ws = new WebSocket(url, protocols);
    state.ws = ws;
    ws.onopen = () => {
      state.retries = 0;
      setConn('live', 'live');
      send({ type: 'subscribe', channel: 'broadcasts' });
      if (state.selected) send({ type: 'subscribe', channel: 'broadcast:' + state.selected });
    };
    ws.onmessage = (e) => receive(JSON.parse(e.data));
    ws.onclose = () => {
      // A socket replaced by a newer one closes quietly.
      if (state.ws !== ws) return;
      state.ws = null;
      retryLater();
    };
  }

  function send(msg) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
  }

  function receive(msg) {
    // A push for a broadcast no longer selected may cross the unsubscribe.
    const mine = msg.channel === 'broadcast:' + state.selected;
    switch (msg.type) {
      case 'broadcasts_update':
        renderBroadcasts(msg.data.broadcasts);
        break;
      case 'broadcast_update':
        if (mine) {
          state.detail = msg.data;
          renderBroadcast();
        }
        break;
      case 'fleet_event':
        if (mine) addEvent(msg.data, msg.timestamp);
        break;
      case 'error':
        console.warn('stagefleet /ws:', msg.message);
        break;
    }
  }

  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    state.key = $('api-key').value.trim();
    $('api-key').value = '';
    sessionStorage.setItem(KEY_ITEM, state.key);
    start();
  });

  $('forget-key').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_ITEM);
    state.key = '';
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close();
    askKey('');
  });

  // ---- broadcasts ----

  function renderBroadcasts(list) {
    const body = $('broadcasts').tBodies[0];
    const rows = list.map((b) => {
      const tr = document.createElement('tr');
      tr.dataset.broadcast = b.broadcastId;
      tr.setAttribute('aria-selected', String(b.broadcastId === state.selected));
      tr.append(cell(b.broadcastId), cell(b.hostsLive, 'num'), cell(b.viewers, 'num'), cell(b.stages, 'num'));
      tr.tabIndex = 0;
      tr.addEventListener('click', () => select(b.broadcastId));
      tr.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') select(b.broadcastId);
      });
      return tr;
    });
    body.replaceChildren(...rows);
    $('no-broadcasts').hidden = list.length > 0;
    state.listed = new Set(list.map((b) => b.broadcastId));
    renderBroadcast();
    if (list.length > 0 && !list.some((b) => b.broadcastId === state.selected)) {
      select(list[0].broadcastId);
    }
  }

  function cell(text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function select(id) {
    if (id === state.selected) return;
    if (state.selected) send({ type: 'unsubscribe', channel: 'broadcast:' + state.selected });
    state.selected = id;
    history.replaceState(null, '', '#broadcast=' + encodeURIComponent(id));
    for (const tr of $('broadcasts').tBodies[0].rows) {
      tr.setAttribute('aria-selected', String(tr.dataset.broadcast === id));
    }
    state.detail = null;
    state.stageEls.clear();
    $('stages').replaceChildren();
    $('events').replaceChildren();
    $('no-events').hidden = false;
    $('broadcast-card').hidden = true;
    send({ type: 'subscribe', channel: 'broadcast:' + id });
    loadHistory();
  }

  // renderBroadcast shows the selected broadcast's last state. The list and
  // the state come on two channels, in either order: a broadcast that ended,
  // or one named by a stale link, is not in the list and not shown.
  function renderBroadcast() {
    const b = state.detail;
    $('broadcast-card').hidden = !b || !state.listed.has(b.broadcastId);
    if ($('broadcast-card').hidden) return;
    $('b-id').textContent = b.broadcastId;
    $('b-viewers').textContent = b.viewers;
    $('b-capacity').textContent = b.capacity;
    $('b-hosts').textContent = b.hosts.filter((h) => h.publishing).length;
    $('hosts').replaceChildren(...b.hosts.map((h) => {
      const li = document.createElement('li');
      li.className = h.publishing ? 'publishing' : '';
      li.textContent = `${h.userId || h.participantId} · ${h.publishing ? 'publishing' : 'joined, not publishing'}`;
      li.title = h.participantId;
      return li;
    }));

    // Stage elements are kept by ARN and updated in place, so that a seat
    // count moves its bar rather than redrawing the list.
    const seen = new Set();
    const els = b.stages.map((s) => {
      seen.add(s.arn);
      let el = state.stageEls.get(s.arn);
      if (!el) {
        el = $('stage-template').content.firstElementChild.cloneNode(true);
        state.stageEls.set(s.arn, el);
      }
      renderStage(el, s);
      return el;
    });
    for (const arn of state.stageEls.keys()) {
      if (!seen.has(arn)) state.stageEls.delete(arn);
    }
    $('stages').replaceChildren(...els);
  }

  // hostName is the userId of the selected broadcast's host with that
  // participant id, which reads better than the id.
  function hostName(participantId) {
    const host = state.detail && state.detail.hosts.find((h) => h.participantId === participantId);
    return (host && host.userId) || participantId;
  }

  function renderStage(el, s) {
    const q = (sel) => el.querySelector(sel);
    el.dataset.arn = s.arn;
    el.dataset.role = s.role;
    el.classList.toggle('draining', s.draining);
    q('.role').textContent = s.role;
    // The ARN's id tells stages apart (their names share a long prefix),
    // and is how the fleet events name them.
    q('.name').textContent = s.arn.split('/').pop();
    q('.name').title = s.name ? `${s.name}\n${s.arn}` : s.arn;
    q('.count').textContent = s.seats;
    q('.capacity').textContent = s.capacity;
    const full = s.capacity > 0 ? Math.min(1, s.seats / s.capacity) : 0;
    const bar = q('.bar');
    bar.setAttribute('role', 'meter');
    bar.setAttribute('aria-label', 'seats taken');
    bar.setAttribute('aria-valuemin', '0');
    bar.setAttribute('aria-valuemax', String(s.capacity));
    bar.setAttribute('aria-valuenow', String(s.seats));
    bar.dataset.level = full >= 1 ? 'full' : full >= 0.8 ? 'high' : 'low';
    q('.fill').style.width = (full * 100).toFixed(1) + '%';
    q('.draining').hidden = !s.draining;
    q('.closed').hidden = s.seatable || s.draining;
    q('.replications').replaceChildren(...s.replications.map((r) => {
      const li = document.createElement('li');
      const who = document.createElement('span');
      who.className = 'participant';
      who.textContent = hostName(r.participantId);
      who.title = r.participantId;
      const st = document.createElement('span');
      st.className = 'state state-' + r.state;
      st.textContent = r.state;
      li.append(who, st);
      return li;
    }));
  }

  // ---- fleet events ----

  const EVENT_NAMES = {
    stage_created: 'stage created',
    stage_removed: 'stage removed',
    stage_draining: 'stage draining',
    replication_active: 'replication active',
    replication_stopped: 'replication stopped',
    host_live: 'host live',
    host_left: 'host left',
    stage_opened: 'stage opened',
    stage_closed: 'stage closed',
  };

  function addEvent(ev, timestamp) {
    const li = document.createElement('li');
    li.dataset.kind = ev.kind;
    const at = document.createElement('time');
    const when = timestamp ? new Date(timestamp) : new Date();
    at.dateTime = when.toISOString();
    at.textContent = when.toLocaleTimeString();
    const kind = document.createElement('span');
    kind.className = 'kind kind-' + ev.kind;
    kind.textContent = EVENT_NAMES[ev.kind] || ev.kind;
    const what = document.createElement('span');
    what.className = 'what';
    what.textContent = [ev.role, ev.stageArn && ev.stageArn.split('/').pop(), ev.participantId && hostName(ev.participantId)]
      .filter(Boolean).join(' · ');
    what.title = ev.stageArn || '';
    li.append(at, kind, what);
    const list = $('events');
    list.prepend(li);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    $('no-events').hidden = true;
  }

  // ---- metrics ----

  const SAMPLE = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
  const LABEL = /([A-Za-z_]\w*)="((?:[^"\\]|\\.)*)"/g;

  function parseValue(v) {
    if (v === '+Inf') return Infinity;
    if (v === '-Inf') return -Infinity;
    return Number(v);
  }

  // parseMetrics reads Prometheus's text format into a map from a sample's
  // name to its samples, each {labels, value}.
  function parseMetrics(text) {
    const samples = new Map();
    for (const line of text.split('\n')) {
      if (line === '' || line[0] === '#') continue;
      const m = SAMPLE.exec(line);
      if (!m) continue;
      const labels = {};
      for (const [, k, v] of (m[2] || '').matchAll(LABEL)) {
        labels[k] = v.replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      }
      if (!samples.has(m[1])) samples.set(m[1], []);
      samples.get(m[1]).push({ labels, value: parseValue(m[3]) });
    }
    return samples;
  }

  function sum(scrape, name, match = () => true) {
    let total = 0;
    for (const s of scrape.samples.get(name) || []) if (match(s.labels)) total += s.value;
    return total;
  }

  // increase is how much a counter grew between two scrapes. A counter that
  // fell was reset by a restart, and has counted its whole value since.
  function increase(before, after) {
    return after >= before ? after - before : after;
  }

  function rate(prev, cur, name, match) {
    return increase(sum(prev, name, match), sum(cur, name, match)) / (cur.t - prev.t);
  }

  function buckets(scrape, name) {
    const m = new Map();
    for (const s of scrape.samples.get(name + '_bucket') || []) {
      const le = parseValue(s.labels.le);
      m.set(le, (m.get(le) || 0) + s.value);
    }
    return m;
  }

  // quantile estimates the q-quantile of what a histogram observed between
  // two scrapes, as Prometheus's histogram_quantile does: linearly within
  // the bucket the rank falls in. null when nothing was observed.
  function quantile(q, before, after) {
    const b = [...after].map(([le, n]) => [le, increase(before.get(le) || 0, n)]).sort((x, y) => x[0] - y[0]);
    const total = b.length ? b[b.length - 1][1] : 0;
    if (total === 0) return null;
    const rank = q * total;
    let lower = 0;
    let below = 0;
    for (const [le, n] of b) {
      if (n >= rank) {
        if (le === Infinity) return lower;
        if (n === below) return le;
        return lower + ((le - lower) * (rank - below)) / (n - below);
      }
      lower = le;
      below = n;
    }
    return lower;
  }

  function showMetricsNote(text) {
    for (const card of [$('joins-card'), $('ivs-card')]) {
      const note = card.querySelector('.metrics-note');
      note.textContent = text;
      note.hidden = text === '';
    }
  }

  async function scrapeMetrics() {
    clearTimeout(state.metricsTimer);
    // The second scrape comes a second after the first, so that rates show
    // as soon as the page opens.
    state.metricsTimer = setTimeout(scrapeMetrics, state.scrapeCalls++ === 0 ? 1000 : METRICS_EVERY_MS);
    let res;
    try {
      res = await fetch('metrics', { headers: authHeaders(), cache: 'no-store' });
    } catch {
      return;
    }
    if (res.status === 404) {
      showMetricsNote('/metrics is not served on this address (METRICS_ADDR serves it apart, or not at all), so there are no rates to show here.');
      return;
    }
    if (!res.ok) {
      showMetricsNote(`/metrics answered ${res.status}.`);
      return;
    }
    showMetricsNote('');
    const now = Date.now() / 1000;
    state.scrapes.push({ t: now, samples: parseMetrics(await res.text()) });
    while (state.scrapes.length > 2 && state.scrapes[0].t < now - METRICS_KEEP_S) state.scrapes.shift();
    renderMetrics();
  }

  const ok = (l) => l.outcome === 'ok';
  const refused = (l) => l.outcome === 'full' || l.outcome === 'limit';
  const service = (l) => l.source === 'service';
  const pacer = (l) => l.source === 'pacer';

  function renderMetrics() {
    const sc = state.scrapes;
    if (sc.length < 2) return;
    const t = [];
    const joins = [];
    const refusals = [];
    const p50 = [];
    const p95 = [];
    const p99 = [];
    const calls = [];
    const throttled = [];
    const paced = [];
    let from = 0;
    for (let i = 1; i < sc.length; i++) {
      const prev = sc[i - 1];
      const cur = sc[i];
      t.push(cur.t);
      joins.push(rate(prev, cur, 'stagefleet_viewer_tokens_total', ok));
      refusals.push(rate(prev, cur, 'stagefleet_viewer_tokens_total', refused));
      calls.push(rate(prev, cur, 'stagefleet_ivs_calls_total'));
      throttled.push(rate(prev, cur, 'stagefleet_ivs_throttles_total', service));
      paced.push(rate(prev, cur, 'stagefleet_ivs_throttles_total', pacer));
      while (from < i - 1 && sc[from + 1].t <= cur.t - QUANTILE_WINDOW_S) from++;
      const before = buckets(sc[from], 'stagefleet_time_to_seat_seconds');
      const after = buckets(cur, 'stagefleet_time_to_seat_seconds');
      p50.push(quantile(0.5, before, after));
      p95.push(quantile(0.95, before, after));
      p99.push(quantile(0.99, before, after));
    }
    const last = (xs) => xs[xs.length - 1];
    $('m-joins').textContent = perSecond(last(joins));
    $('m-refused').textContent = perSecond(last(refusals));
    $('m-p50').textContent = duration(last(p50));
    $('m-p95').textContent = duration(last(p95));
    $('m-p99').textContent = duration(last(p99));
    $('m-ivs').textContent = perSecond(last(calls));
    $('m-throttled').textContent = perSecond(last(throttled));
    $('m-paced').textContent = perSecond(last(paced));

    plot('joins', $('joins-chart'), 'viewer tokens per second', [
      { label: 'joins/s', stroke: '#15803d' },
      { label: 'refused/s', stroke: '#b91c1c' },
    ], perSecond, 1, [t, joins, refusals]);
    plot('seat', $('seat-chart'), 'time to seat, over the last minute', [
      { label: 'p50', stroke: '#2563eb' },
      { label: 'p95', stroke: '#7c3aed' },
      { label: 'p99', stroke: '#b45309' },
    ], duration, 0.1, [t, p50, p95, p99]);
    plot('ivs', $('ivs-chart'), 'IVS attempts per second', [
      { label: 'calls/s', stroke: '#2563eb' },
      { label: 'throttled/s', stroke: '#b91c1c' },
      { label: 'paced/s', stroke: '#b45309' },
    ], perSecond, 1, [t, calls, throttled, paced]);
  }

  function perSecond(v) {
    if (v == null) return '–';
    return String(+(v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)));
  }

  function duration(s) {
    if (s == null) return '–';
    return s < 1 ? `${Math.round(s * 1000)} ms` : `${+s.toFixed(2)} s`;
  }

  // plot draws data in a chart made on first use, which follows its box's
  // width (a phone turned, a window resized). The time axis spans at least
  // CHART_MIN_SPAN_S, ending at the last point, so that a chart that has
  // only begun grows from the right. The y axis starts at 0 and reaches at
  // least minTop, so that a quiet minute is a flat line at the bottom rather
  // than noise blown up to the chart's height.
  function plot(name, el, title, series, format, minTop, data) {
    if (typeof uPlot === 'undefined') return;
    let chart = state.charts[name];
    if (!chart) {
      chart = new uPlot({
        title,
        width: el.clientWidth,
        height: CHART_HEIGHT,
        legend: { live: false },
        scales: {
          x: { time: true, range: (u, min, max) => [Math.min(min, max - CHART_MIN_SPAN_S), max] },
          y: { range: (u, min, max) => [0, Math.max(minTop, max * 1.1)] },
        },
        series: [{}, ...series.map((s) => ({ ...s, width: 2 }))],
        axes: [{}, { size: 60, values: (u, ticks) => ticks.map(format) }],
      }, data, el);
      new ResizeObserver(() => chart.setSize({ width: el.clientWidth, height: CHART_HEIGHT })).observe(el);
      state.charts[name] = chart;
      return;
    }
    chart.setData(data);
  }

  // ---- viewing history ----

  async function loadHistory() {
    clearTimeout(state.historyTimer);
    state.historyTimer = setTimeout(loadHistory, HISTORY_EVERY_MS);
    if (!state.selected) return;
    const to = new Date();
    const from = new Date(to.getTime() - HISTORY_SPAN_S * 1000);
    const query = new URLSearchParams({
      broadcastId: state.selected,
      from: from.toISOString(),
      to: to.toISOString(),
      step: HISTORY_STEP_S + 's',
    });
    let res;
    try {
      res = await fetch('api/stats/history?' + query, { headers: authHeaders(), cache: 'no-store' });
    } catch {
      return;
    }
    const note = $('history-note');
    if (!res.ok) {
      // 404: the server keeps no history (HISTORY=off).
      note.textContent = res.status === 404 ? 'This server keeps no viewing history.' : `The history answered ${res.status}.`;
      note.hidden = false;
      return;
    }
    // A step without a snapshot (no stage recorded) is a gap, not zero
    // viewers; the chart starts at the first step recorded and ends now.
    const points = (await res.json()).data.points;
    const first = points.findIndex((p) => p.stages > 0);
    const shown = first < 0 ? [] : points.slice(first);
    note.textContent = 'No history yet.';
    note.hidden = shown.length > 0;
    if (shown.length === 0) return;
    const recorded = (p, v) => (p.stages > 0 ? v : null);
    plot('history', $('history-chart'), 'the most at once, a minute at a time', [
      { label: 'viewers', stroke: '#2563eb', fill: 'rgba(37, 99, 235, 0.12)', spanGaps: true },
      { label: 'stages', stroke: '#7c3aed', spanGaps: true },
    ], (v) => (v == null ? '–' : String(Math.round(v))), 1, [
      [...shown.map((p) => Date.parse(p.at) / 1000), to.getTime() / 1000],
      [...shown.map((p) => recorded(p, p.viewers)), null],
      [...shown.map((p) => recorded(p, p.stages)), null],
    ]);
  }

  start();
})();
