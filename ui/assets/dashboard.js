// ClusterKit dashboard: polls GET /cluster/overview on the node that served this page and renders
// it. Everything that comes from the cluster is written with textContent (via el()), never as HTML.
"use strict";

(function () {
  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const TOKEN_KEY = "clusterkit.adminToken";
  const DENSE_ABOVE = 48; // partitions: above this the grid shows compact cells

  const $ = (id) => document.getElementById(id);

  // el builds an element; string children become text nodes, so data can never become markup.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "text") e.textContent = String(v);
        else e.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      e.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return e;
  }

  // ---- token (sessionStorage only; sent as a header, never in a URL) ----
  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (_) { return ""; }
  }
  function setToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage disabled: the token lasts only until the next call */ }
    updateTokenUI();
  }

  async function apiGet(path) {
    const headers = { "Accept": "application/json" };
    const tok = getToken();
    if (tok) headers["Authorization"] = "Bearer " + tok;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      const res = await fetch(path, { headers, cache: "no-store", credentials: "same-origin", signal: ctl.signal, referrerPolicy: "no-referrer" });
      let body = null;
      try { body = await res.json(); } catch (_) { body = null; }
      return { status: res.status, ok: res.ok, body };
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- formatting ----
  function fmtTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso || "") : d.toLocaleTimeString();
  }
  function fmtDuration(sec) {
    if (!isFinite(sec) || sec < 0) return "–";
    sec = Math.floor(sec);
    const d = Math.floor(sec / 86400), h = Math.floor(sec % 86400 / 3600), m = Math.floor(sec % 3600 / 60), s = sec % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }
  function ago(iso, now) {
    const t = Date.parse(iso);
    if (isNaN(t)) return "–";
    return fmtDuration((now - t) / 1000) + " ago";
  }
  function timeEl(iso, text) {
    return el("time", { datetime: iso, title: iso }, text);
  }
  function rate(v) {
    if (v === null || v === undefined) return "–";
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }
  function partNum(id) {
    const m = /(\d+)$/.exec(String(id));
    return m ? m[1] : String(id);
  }
  const list = (a) => (Array.isArray(a) && a.length ? a.join(", ") : "none");

  // ---- state between polls ----
  const prev = new Map(); // node id -> {t, req, err}: counters of the previous poll, for rates
  let last = null;        // the last overview rendered
  let selected = "";      // partition id whose details are shown

  function computeRates(ov) {
    const t = Date.parse(ov.time) || Date.now();
    const out = new Map();
    for (const n of ov.nodes || []) {
      const p = prev.get(n.id);
      let r = null;
      // A node that restarted resets its counters; a gap, not a negative rate.
      if (p && t > p.t && n.request_count >= p.req && n.error_count >= p.err && n.reachable !== false) {
        const dt = (t - p.t) / 1000;
        r = { req: (n.request_count - p.req) / dt, err: (n.error_count - p.err) / dt };
      }
      out.set(n.id, r);
      if (n.reachable !== false) prev.set(n.id, { t, req: n.request_count || 0, err: n.error_count || 0 });
    }
    return out;
  }

  // ---- rendering ----
  function renderHealth(ov) {
    const h = ov.health || {};
    const state = h.state || "unknown";
    const banner = $("health");
    banner.dataset.state = state;
    $("health-state").textContent = "Cluster " + state;
    const parts = [];
    if (Array.isArray(h.unhealthy_nodes) && h.unhealthy_nodes.length) parts.push("unhealthy nodes: " + h.unhealthy_nodes.join(", "));
    const bad = (ov.partitions || []).filter((p) => p.state && p.state !== "stable").length;
    if (bad) parts.push(bad + " partition" + (bad === 1 ? "" : "s") + " not stable");
    if (!ov.leader || !ov.leader.id) parts.push("no Raft leader known");
    $("health-detail").textContent = parts.length ? " — " + parts.join("; ") : "";
  }

  function renderNodes(ov, rates, now) {
    const body = $("nodes").tBodies[0];
    const rows = [];
    const L = ov.leader || {};
    $("leader-line").textContent = L.id
      ? "Raft leader: " + L.id + (L.name ? " (" + L.name + ")" : "") + ", term " + L.term + (L.elected_at ? ", elected " + ago(L.elected_at, now) : "")
      : "Raft leader: none known" + (L.term ? " (term " + L.term + ")" : "");
    for (const n of ov.nodes || []) {
      const status = n.status || "unknown";
      const reach = n.reachable === true;
      const down = status !== "active" || !reach;
      const r = rates.get(n.id);
      const roles = [];
      if (n.leader) roles.push(el("span", { class: "badge leader" }, "leader"));
      if (n.draining) roles.push(el("span", { class: "badge suspect" }, (roles.length ? " " : "") + "draining"));
      roles.push(el("span", { class: "muted" }, (roles.length ? " " : "") + (n.voter ? "voter" : "non-voter")));
      const services = n.services && typeof n.services === "object" ? Object.entries(n.services) : [];
      rows.push(el("tr", { "data-node": n.id, "data-status": status, "data-reachable": String(reach), class: down ? "down" : "" },
        el("td", { "data-label": "Node" },
          el("div", null, el("strong", null, n.id), n.name ? " " : "", n.name ? el("span", { class: "muted" }, n.name) : null,
            el("div", { class: "muted small mono" }, n.mgmt_addr || ""),
            services.length ? el("div", { class: "muted small" }, "services: " + services.map(([k, v]) => k + "=" + v).join(", ")) : null)),
        el("td", { "data-label": "Status" }, el("span", { class: "badge " + status }, status)),
        el("td", { "data-label": "Since" }, n.since ? timeEl(n.since, ago(n.since, now)) : "–"),
        el("td", { "data-label": "Reachable now" },
          el("span", null,
            el("span", { class: "badge " + (reach ? "yes" : "no"), "data-reachable": String(reach), title: n.error || null }, reach ? "reachable" : "not reachable"),
            !reach && n.error ? el("span", { class: "small muted err" }, n.error) : null)),
        el("td", { "data-label": "Role" }, el("span", null, ...roles)),
        el("td", { "data-label": "Partitions", class: "num" }, (n.primaries ?? 0) + " primary, " + (n.replicas ?? 0) + " copies"),
        el("td", { "data-label": "Requests/s", class: "num" }, r ? rate(r.req) : "–"),
        el("td", { "data-label": "Errors/s", class: "num" }, r ? rate(r.err) : "–"),
        el("td", { "data-label": "Uptime", class: "num" }, reach && n.uptime_seconds != null ? fmtDuration(n.uptime_seconds) : "–")));
    }
    if (!rows.length) rows.push(el("tr", null, el("td", { colspan: 9, class: "empty" }, "No nodes.")));
    body.replaceChildren(...rows);

    // Keep the node highlight choices in step with the membership.
    const sel = $("part-node");
    const want = ["", ...(ov.nodes || []).map((n) => n.id)];
    const have = Array.from(sel.options).map((o) => o.value);
    if (want.join("\n") !== have.join("\n")) {
      const cur = sel.value;
      sel.replaceChildren(...want.map((v) => el("option", { value: v }, v || "none")));
      sel.value = want.includes(cur) ? cur : "";
    }
  }

  function renderPartitions(ov) {
    const parts = ov.partitions || [];
    // Nodes this node could not reach on this poll: the cluster may still record them active (the
    // failover grace), so the grid marks their partitions itself.
    const unreachable = new Set((ov.nodes || []).filter((n) => n.reachable === false || n.status === "dead").map((n) => n.id));
    const grid = $("partitions");
    const filter = $("part-filter").value;
    const hl = $("part-node").value;
    const c = ov.cluster || {};
    $("part-count").textContent = "(" + parts.length + (c.replication_factor ? ", RF " + c.replication_factor : "") +
      (c.min_insync ? ", min in-sync " + c.min_insync : "") + ")";
    grid.classList.toggle("dense", parts.length > DENSE_ABOVE);
    const items = [];
    for (const p of parts) {
      const state = p.state || "unknown";
      if (filter === "problems" && state === "stable") continue;
      const isr = p.in_sync_replicas || [];
      const cu = p.catching_up || [];
      const involved = [p.primary_node, ...(p.replica_nodes || []), ...cu];
      const primaryDown = !!p.primary_node && unreachable.has(p.primary_node);
      const label = p.id + ": " + state + ", primary " + (p.primary_node || "none") + (primaryDown ? " (not reachable now)" : "") +
        ", in-sync " + list(isr) + ", catching up " + list(cu) + ", epoch " + p.epoch;
      const flag = state === "stable" ? (primaryDown ? "?" : "") : state === "catching-up" ? "C" : state === "under-replicated" ? "!" : "✕";
      items.push(el("li", { "data-partition": p.id, "data-state": state },
        el("button", {
          type: "button", class: "pcell st-" + state + (hl && !involved.includes(hl) ? " dim" : "") + (primaryDown ? " pdown" : ""),
          "aria-pressed": String(selected === p.id), "aria-label": label, title: label, "data-id": p.id,
        },
          el("span", { class: "pnum" }, partNum(p.id)),
          el("span", { class: "pflag", "aria-hidden": "true" }, flag || " "),
          el("span", { class: "pline" }, "P " + (p.primary_node || "—") + (primaryDown ? " (down)" : "")),
          el("span", { class: "pline" }, "S " + (isr.filter((x) => x !== p.primary_node).join(",") || "—")),
          cu.length ? el("span", { class: "pline" }, "C " + cu.join(",")) : null,
          el("span", { class: "pline muted" }, "e" + p.epoch + " · " + state))));
    }
    if (!items.length) items.push(el("li", { class: "empty" }, filter === "problems" ? "Every partition is stable." : "No partitions."));
    grid.replaceChildren(...items);
    const downNote = parts.filter((p) => unreachable.has(p.primary_node)).length;
    $("part-down").textContent = downNote ? downNote + " partition" + (downNote === 1 ? " has its primary" : "s have their primary") +
      " on a node this node cannot reach now (dashed border)." : "";
    renderDetail(ov);
  }

  function renderDetail(ov) {
    const box = $("part-detail");
    const p = (ov.partitions || []).find((x) => x.id === selected);
    if (!p) { box.replaceChildren(); return; }
    const row = (k, v) => [el("dt", null, k), el("dd", null, v)];
    box.replaceChildren(el("dl", null,
      ...row("Partition", p.id), ...row("State", p.state || "unknown"), ...row("Primary", p.primary_node || "none"),
      ...row("Copies", list(p.replica_nodes)), ...row("In sync", list(p.in_sync_replicas)),
      ...row("Catching up", list(p.catching_up)), ...row("Epoch", String(p.epoch))));
  }

  function renderMigrations(ov) {
    const ms = ov.migrations || [];
    const out = ms.map((m) => {
      const total = Number(m.keys_total) || 0, sent = Number(m.keys_sent) || 0;
      const pct = total > 0 ? Math.min(100, Math.round(sent / total * 100)) : 0;
      // Without a total (a copy that has not started, or a tail copy) the bar is indeterminate.
      const prog = total > 0
        ? el("progress", { max: total, value: Math.min(sent, total), "aria-label": m.partition + " copy to " + m.replica })
        : el("progress", { "aria-label": m.partition + " copy to " + m.replica });
      return el("li", { class: "migr", "data-partition": m.partition },
        el("div", null, el("strong", null, m.partition), " → " + m.replica + (m.from ? " from " + m.from : "")),
        prog,
        el("div", { class: "small muted" }, (total > 0 ? sent + " / " + total + " keys (" + pct + "%)" : sent + " keys sent, total not known yet") +
          (m.how ? ", " + m.how : "") +
          (m.started_at ? ", started " + ago(m.started_at, Date.now()) : "")));
    });
    if (!out.length) out.push(el("li", { class: "empty" }, "None."));
    $("migrations").replaceChildren(...out);
  }

  function renderEvents(ov) {
    const ev = ov.events || [];
    const out = ev.map((e) => el("li", { "data-type": e.type },
      el("time", { datetime: e.time, title: e.time }, fmtTime(e.time)),
      el("span", { class: "badge etype" }, e.type || "event"),
      el("span", null, e.message || [e.node, e.partition].filter(Boolean).join(" "))));
    if (!out.length) out.push(el("li", { class: "empty" }, "No events yet."));
    $("events").replaceChildren(...out);
  }

  function render(ov) {
    const now = Date.now();
    const rates = computeRates(ov);
    last = ov;
    $("cluster-name").textContent = ov.cluster && ov.cluster.name ? ov.cluster.name : "";
    $("served-by").textContent = ov.served_by || "?";
    renderHealth(ov);
    renderNodes(ov, rates, now);
    renderPartitions(ov);
    renderMigrations(ov);
    renderEvents(ov);
  }

  // ---- polling ----
  function markOK() {
    document.body.classList.remove("is-stale");
    $("stale").hidden = true;
    const c = $("conn");
    c.dataset.state = "ok";
    c.textContent = "live";
    const lu = $("last-updated");
    const d = new Date();
    lu.dateTime = d.toISOString();
    lu.textContent = d.toLocaleTimeString();
  }

  function markFailed(why) {
    document.body.classList.add("is-stale");
    const c = $("conn");
    c.dataset.state = "error";
    c.textContent = "cannot reach this node";
    const s = $("stale");
    s.hidden = false;
    if (last) $("health-state").textContent = "Cluster " + ((last.health && last.health.state) || "unknown") + " (stale)";
    s.textContent = "Cannot reach this node (" + location.host + "): " + why + ". " +
      (last ? "The data below is stale, from " + $("last-updated").textContent + "." : "No data yet.") + " Retrying every 2 s.";
  }

  async function poll() {
    const started = Date.now();
    try {
      const r = await apiGet("/cluster/overview");
      if (r.ok && r.body) {
        render(r.body);
        markOK();
      } else if (r.status === 401 || r.status === 403) {
        markFailed("the overview needs a token (HTTP " + r.status + ")");
        askToken(r.status, r.body);
      } else {
        markFailed("HTTP " + r.status + (r.body && r.body.error ? ": " + r.body.error : ""));
      }
    } catch (e) {
      markFailed(e && e.name === "AbortError" ? "no answer within " + FETCH_TIMEOUT_MS / 1000 + " s" : "network error");
    }
    setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
  }

  // ---- admin panel ----
  function updateTokenUI() {
    const has = !!getToken();
    $("token-forget").hidden = !has;
    $("token-state").textContent = has ? "Using a token from this tab's session." : "No token set.";
  }

  // askToken shows the token form; focus moves to it only when the user asked for the admin views
  // (not on page load or from the background poll, which would steal focus while reading).
  function askToken(status, body, focus) {
    const f = $("token-form");
    const first = f.hidden;
    f.hidden = false;
    $("token-why").textContent = (status === 403
      ? "The token in use is not allowed to see these views (HTTP 403). Enter an admin token."
      : "This cluster needs an admin token for these views (HTTP 401).") +
      (body && body.error ? " The node said: " + body.error : "");
    if (first && focus) $("token-input").focus();
  }

  function renderTokens(body) {
    const ts = (body && body.tokens) || [];
    const rows = ts.map((t) => el("tr", { "data-token-id": t.id },
      el("td", { "data-label": "ID", class: "mono" }, String(t.id || "")),
      el("td", { "data-label": "Name" }, String(t.name || "")),
      el("td", { "data-label": "Scopes" }, list(t.scopes)),
      el("td", { "data-label": "Created" }, t.created ? timeEl(t.created, new Date(t.created).toLocaleString()) : "–")));
    if (!rows.length) rows.push(el("tr", null, el("td", { colspan: 4, class: "empty" }, "No tokens.")));
    $("tokens").tBodies[0].replaceChildren(...rows);
  }

  function renderKeyring(body) {
    const ks = (body && body.keys) || [];
    const rows = ks.map((k) => el("tr", { "data-fingerprint": k.fingerprint },
      el("td", { "data-label": "Fingerprint", class: "mono" }, String(k.fingerprint || "")),
      el("td", { "data-label": "Primary on" }, list(k.primary_on)),
      el("td", { "data-label": "Installed on" }, list(k.installed_on))));
    if (!rows.length) rows.push(el("tr", null, el("td", { colspan: 3, class: "empty" }, "No keys (the cluster runs without CLUSTER_KEY).")));
    $("keyring").tBodies[0].replaceChildren(...rows);
    const errs = body && body.errors;
    let txt = "";
    if (errs && typeof errs === "object" && Object.keys(errs).length) {
      txt = "Not answering: " + Object.entries(errs).map(([k, v]) => k + " (" + v + ")").join(", ");
    }
    $("keyring-errors").textContent = txt;
  }

  function clearAdmin() {
    $("tokens").tBodies[0].replaceChildren();
    $("keyring").tBodies[0].replaceChildren();
    $("keyring-errors").textContent = "";
  }

  async function loadAdmin(focus) {
    const msg = $("admin-msg");
    msg.textContent = "Loading…";
    let denied = null;
    try {
      const [tok, ring] = await Promise.all([apiGet("/tokens"), apiGet("/cluster/keyring")]);
      for (const r of [tok, ring]) if (r.status === 401 || r.status === 403) denied = r;
      if (denied) {
        clearAdmin();
        msg.textContent = "";
        askToken(denied.status, denied.body, focus === true);
        return;
      }
      $("token-form").hidden = true;
      const bad = [[tok, "tokens"], [ring, "keyring"]].filter(([r]) => !r.ok)
        .map(([r, what]) => what + ": HTTP " + r.status + (r.body && r.body.error ? " " + r.body.error : ""));
      if (tok.ok) renderTokens(tok.body);
      if (ring.ok) renderKeyring(ring.body);
      msg.textContent = bad.length ? "Could not load " + bad.join("; ") : "Loaded at " + new Date().toLocaleTimeString() + ".";
    } catch (e) {
      msg.textContent = "Cannot reach this node for the admin views.";
    }
  }

  function init() {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("token-input");
      const v = input.value.trim();
      input.value = "";
      if (!v) return;
      setToken(v);
      loadAdmin(true);
    });
    $("token-forget").addEventListener("click", () => {
      setToken("");
      clearAdmin();
      $("admin-msg").textContent = "Token forgotten.";
      loadAdmin(false);
    });
    $("admin-refresh").addEventListener("click", () => loadAdmin(true));
    $("part-filter").addEventListener("change", () => { if (last) renderPartitions(last); });
    $("part-node").addEventListener("change", () => { if (last) renderPartitions(last); });
    $("partitions").addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-id]");
      if (!b) return;
      selected = selected === b.dataset.id ? "" : b.dataset.id;
      if (last) {
        renderPartitions(last);
        const again = document.querySelector('#partitions button[data-id="' + CSS.escape(b.dataset.id) + '"]');
        if (again) again.focus();
      }
    });
    updateTokenUI();
    poll();
    loadAdmin(false);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
