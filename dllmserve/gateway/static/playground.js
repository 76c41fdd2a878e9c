// The playground: POST a completion with stream_mode "denoise" and draw every step's canvas.
// Each server-sent event is an OpenAI chunk whose choice carries `denoise`: the positions the
// step committed and their token texts. Cells committed by the latest step are "new", earlier
// ones "old", the rest "masked". With "Provisional tokens" on, the request asks for each step's
// proposals and a masked cell shows its proposed token faintly ("provisional"; the surer the
// model, the less faint). With an editing threshold (LLaDA2.1), a committed token the step
// replaced is "edited" (its title says what it was). Every frame is kept so the replay slider
// can show any step.
"use strict";

const $ = (id) => document.getElementById(id);
const MASK = "\u00b7";
const state = { cells: [], frames: [], answer: "", t0: 0 };
window.playground = state; // read by the browser test, handy in the console too

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function loadModels() {
  const select = $("model");
  select.replaceChildren(new Option("(the served model)", ""));
  try {
    const r = await fetch("v1/models", { headers: authHeaders() });
    if (!r.ok) return;
    for (const m of (await r.json()).data) select.add(new Option(m.id, m.id));
    if (select.options.length === 2) select.selectedIndex = 1;
  } catch (e) {
    /* the list is a convenience: generation still works with the served model */
  }
}

function intOf(id) {
  return parseInt($(id).value, 10);
}

function requestBody() {
  const body = {
    model: $("model").value,
    stream: true,
    stream_mode: "denoise",
    max_tokens: intOf("gen_length"),
    steps: intOf("steps"),
    block_length: intOf("block_length"),
    temperature: parseFloat($("temperature").value),
    seed: intOf("seed"),
  };
  if ($("provisional").checked) body.provisional = true;
  const editing = $("editing_threshold").value.trim();
  if (editing !== "") body.editing_threshold = parseFloat(editing);
  if ($("sparse").checked) body.sparse_config = { retention_ratio: parseFloat($("retention").value) };
  const prompt = $("prompt").value;
  if ($("chat").checked) body.messages = [{ role: "user", content: prompt }];
  else body.prompt = prompt;
  return body;
}

function resetCanvas(n) {
  document.querySelector(".legend .provisional").hidden = !$("provisional").checked;
  state.cells = Array.from({ length: n }, () => ({ text: MASK, kind: "masked" }));
  state.frames = [];
  state.answer = "";
  $("answer").textContent = "";
  $("error").hidden = true;
  $("ended").hidden = true;
  const replay = $("replay");
  replay.disabled = true;
  replay.max = 1;
  replay.value = 1;
  draw(state.cells);
}

function draw(cells) {
  const canvas = $("canvas");
  if (canvas.children.length !== cells.length) {
    canvas.replaceChildren(...cells.map(() => document.createElement("i")));
  }
  cells.forEach((c, i) => {
    const el = canvas.children[i];
    el.className = `tok ${c.kind}`;
    el.textContent = c.text === "" ? "\u2205" : c.text; // a special token (EOS) decodes to ""
    el.style.opacity = c.kind === "provisional" ? (0.25 + 0.5 * c.confidence).toFixed(2) : "";
    el.title = c.kind === "provisional" ? `confidence ${c.confidence.toFixed(3)}`
      : c.kind === "edited" ? `was ${JSON.stringify(c.was)}` : "";
  });
}

function applyStep(d) {
  for (const [i, c] of state.cells.entries()) {
    if (c.kind === "new" || c.kind === "edited") c.kind = "old";
    else if (c.kind === "provisional") state.cells[i] = { text: MASK, kind: "masked" };
  }
  const was = new Map((d.edits || []).map((e) => [e.position, state.cells[e.position].text]));
  d.positions.forEach((p, k) => {
    const text = d.token_texts[k] ?? "?";
    state.cells[p] = was.has(p) ? { text, kind: "edited", was: was.get(p) } : { text, kind: "new" };
  });
  for (const p of d.provisional || []) {
    if (state.cells[p.position].kind !== "masked") continue; // committed by this very step
    state.cells[p.position] = { text: p.text, kind: "provisional", confidence: p.confidence };
  }
  state.frames.push({ step: d.step, masked: d.masked_left, cells: state.cells.map((c) => ({ ...c })) });
  draw(state.cells);
  const secs = (performance.now() - state.t0) / 1000;
  $("step").textContent = d.step;
  $("total").textContent = d.total_steps;
  $("masked").textContent = d.masked_left;
  $("elapsed").textContent = secs.toFixed(2);
  $("tps").textContent = ((state.cells.length - d.masked_left) / Math.max(secs, 1e-3)).toFixed(1);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  document.body.dataset.state = "error";
}

function onChunk(chunk) {
  if (chunk.error) {
    showError(chunk.error.message);
    return;
  }
  for (const choice of chunk.choices || []) {
    if (choice.denoise) applyStep(choice.denoise);
    const text = choice.delta ? choice.delta.content : choice.text;
    if (text) {
      state.answer += text;
      $("answer").textContent = state.answer;
    }
  }
}

async function generate(event) {
  event.preventDefault();
  const body = requestBody();
  resetCanvas(body.max_tokens || 0);
  document.body.dataset.state = "running";
  $("go").disabled = true;
  state.t0 = performance.now();
  const path = body.messages ? "v1/chat/completions" : "v1/completions";
  try {
    const r = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({ error: { message: r.statusText } }));
      showError(`${r.status}: ${err.error.message}`);
      return;
    }
    await readEvents(r.body.getReader());
    if (document.body.dataset.state === "running") finish();
  } catch (e) {
    showError(String(e));
  } finally {
    $("go").disabled = false;
    const replay = $("replay");
    replay.max = Math.max(1, state.frames.length);
    replay.value = replay.max;
    replay.disabled = state.frames.length === 0;
  }
}

// A request that stopped at EOS before its planned steps ran says so, instead of leaving
// "step 16/32, masked 0" on the counters as if steps were missing.
function finish() {
  document.body.dataset.state = "done";
  const last = state.frames[state.frames.length - 1];
  const total = parseInt($("total").textContent, 10);
  if (last && last.step < total) {
    $("ended").textContent = `stopped early at EOS (${last.step} of ${total} steps)`;
    $("ended").hidden = false;
  }
}

async function readEvents(reader) {
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onChunk(JSON.parse(data));
      }
    }
  }
}

$("form").addEventListener("submit", generate);
$("replay").addEventListener("input", (e) => {
  const frame = state.frames[e.target.value - 1];
  if (!frame) return;
  draw(frame.cells);
  $("step").textContent = frame.step;
  $("masked").textContent = frame.masked;
});
$("token").addEventListener("change", loadModels);
loadModels();
