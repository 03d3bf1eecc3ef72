"""The chat page served at ``GET /``: one self-contained HTML document (inline CSS and JS, no CDN).

Kept in Python (not a package data file) so it ships with the package without packaging config.
The script keeps the conversation client-side, POSTs it to ``/chat/completions`` and renders the
server-sent events as they arrive (Enter sends, Shift+Enter is a newline, Stop aborts the request).
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>jaxchat</title>
<style>
  :root { --fg: #1d1d1f; --muted: #6e6e73; --bg: #fafafa; --user: #e8f0fe; --bot: #ffffff; --err: #b00020; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
         background: var(--bg); display: flex; flex-direction: column; height: 100vh; }
  header { display: flex; align-items: center; gap: 12px; padding: 8px 16px; border-bottom: 1px solid #ddd;
           background: #fff; flex-wrap: wrap; }
  header h1 { font-size: 17px; margin: 0 8px 0 0; }
  header label { color: var(--muted); font-size: 13px; }
  header input { width: 64px; }
  #info { color: var(--muted); font-size: 12px; margin-left: auto; }
  #log { flex: 1; overflow-y: auto; padding: 16px; }
  .msg { max-width: 820px; margin: 0 auto 12px; padding: 10px 14px; border-radius: 10px;
         white-space: pre-wrap; word-wrap: break-word; border: 1px solid #e3e3e3; }
  .user { background: var(--user); }
  .assistant { background: var(--bot); }
  .role { font-size: 12px; color: var(--muted); margin-bottom: 2px; }
  .error { color: var(--err); }
  .dropped { opacity: 0.55; }
  form { display: flex; gap: 8px; padding: 12px 16px; border-top: 1px solid #ddd; background: #fff; }
  textarea { flex: 1; resize: vertical; min-height: 48px; max-height: 40vh; font: inherit; padding: 8px; }
  button { font: inherit; padding: 6px 14px; cursor: pointer; }
</style>
</head>
<body>
<header>
  <h1>jaxchat</h1>
  <label>temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.8"></label>
  <label>top-k <input id="top_k" type="number" min="1" max="200" step="1" value="50"></label>
  <label>max tokens <input id="max_tokens" type="number" min="1" max="4096" step="1" value="512"></label>
  <button id="new" type="button">New conversation</button>
  <span id="info"></span>
</header>
<div id="log"></div>
<form id="form">
  <textarea id="input" placeholder="Message (Enter to send, Shift+Enter for a newline)" autofocus></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let messages = [];        // the conversation sent to the server: {role, content}
let controller = null;    // AbortController of the reply being streamed

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("div");
  body.textContent = text;
  div.append(label, body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return {div, body};
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

async function send(text) {
  messages.push({role: "user", content: text});
  const userView = bubble("user", text);
  const reply = bubble("assistant", "");
  let answer = "";
  let failed = null;
  controller = new AbortController();
  setBusy(true);
  try {
    const resp = await fetch("/chat/completions", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({messages, temperature: numberOrNull("temperature"),
                            top_k: numberOrNull("top_k"), max_tokens: numberOrNull("max_tokens")}),
      signal: controller.signal,
    });
    if (!resp.ok) {
      let detail = resp.status + " " + resp.statusText;
      try { detail = (await resp.json()).error || detail; } catch (e) {}
      throw new Error(detail);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {   // one SSE event per blank-line-terminated block
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = JSON.parse(line.slice(5));
          if (data.token !== undefined) { answer += data.token; reply.body.textContent = answer; }
          if (data.error !== undefined) failed = data.error;
        }
        $("log").scrollTop = $("log").scrollHeight;
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") failed = e.message;
  } finally {
    controller = null;
    setBusy(false);
  }
  if (failed) {
    const note = document.createElement("div");
    note.className = "error";
    note.textContent = "error: " + failed;
    reply.div.append(note);
  }
  if (answer.trim() === "") {
    // The server refuses empty messages, so a turn without a reply is left out of the context.
    messages.pop();
    userView.div.classList.add("dropped");
    reply.div.classList.add("dropped");
    if (!failed) reply.body.textContent = "(no reply; this turn is not kept in the conversation)";
  } else {
    messages.push({role: "assistant", content: answer});
  }
}

$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value;
  if (controller || text.trim() === "") return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $("form").requestSubmit();
  }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("new").addEventListener("click", () => {
  if (controller) controller.abort();
  messages = [];
  $("log").replaceChildren();
  $("input").focus();
});

fetch("/stats").then((r) => r.json()).then((s) => {
  const m = s.model || {};
  const parts = [m.stage, m.tag, m.step !== undefined ? "step " + m.step : null,
                 m.params ? (m.params / 1e6).toFixed(1) + "M params" : null].filter(Boolean);
  $("info").textContent = parts.join(" · ");
  if (s.defaults) {
    $("temperature").value = s.defaults.temperature;
    $("top_k").value = s.defaults.top_k ?? "";
    $("max_tokens").value = s.defaults.max_tokens;
  }
}).catch(() => {});
</script>
</body>
</html>
"""
