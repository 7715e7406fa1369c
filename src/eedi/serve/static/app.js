// The labelling page of `eedi serve`. Every piece of user or model text goes into the page through
// textContent (never innerHTML), so a question holding <script> is shown as text and never runs.
// KaTeX's auto-render then turns \( … \) in those text nodes into math, when KaTeX is bundled.
"use strict";

const $ = (id) => document.getElementById(id);
const LETTERS = ["A", "B", "C", "D"];
let token = sessionStorage.getItem("eedi-token") || "";
let lastItem = null;   // the item the shown ranking belongs to
let lastRerank = false;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function renderMath(node) {
  if (typeof window.renderMathInElement !== "function") return;  // KaTeX not bundled: raw LaTeX stays
  window.renderMathInElement(node, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
      { left: "$$", right: "$$", display: true },
    ],
    throwOnError: false,
    trust: false,
  });
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("auth").hidden = false;
    throw new Error("this server needs a token: enter it above");
  }
  if (!response.ok) {
    let detail = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

function readItem() {
  const value = (id) => $(id).value.trim();
  const checked = (name) => (document.querySelector(`input[name="${name}"]:checked`) || {}).value;
  return {
    question_text: value("question"),
    answer_a_text: value("answer-a"),
    answer_b_text: value("answer-b"),
    answer_c_text: value("answer-c"),
    answer_d_text: value("answer-d"),
    correct_answer: checked("correct"),
    wrong_answer: checked("wrong"),
    construct_name: value("construct"),
    subject_name: value("subject"),
  };
}

function updatePreview() {
  // The pair as the model reads it: question, correct answer, the wrong answer being tagged.
  const preview = $("question-preview");
  const item = readItem();
  const question = el("div", $("question").value, "preview-question");
  preview.replaceChildren(question);
  for (const [label, letter] of [["Correct", item.correct_answer], ["Wrong", item.wrong_answer]]) {
    if (!letter) continue;
    const line = el("div", null, "preview-answer");
    line.appendChild(el("span", `${label} (${letter}): `, "muted"));
    line.appendChild(el("span", $("answer-" + letter.toLowerCase()).value));
    preview.appendChild(line);
  }
  renderMath(preview);
}

async function loadHealth() {
  try {
    const health = await (await api("/healthz")).json();
    const reranker = health.reranker ? `reranker ${health.reranker} (${health.reranker_backend})` : "no reranker";
    const v = health.validation;
    const validation = v && v["map@25_mix"] != null
      ? ` · validation MAP@25 (mix) ${v["map@25_mix"].toFixed(3)} (seen ${v["map@25_seen"].toFixed(3)}, ` +
        `unseen ${v["map@25_unseen"].toFixed(3)}, all ${v["map@25"].toFixed(3)})`
      : " · no validation folds";
    $("health").textContent = `run ${health.run_id} · ${health.misconceptions} misconceptions · ${reranker}` +
      validation +
      ` · ${health.labels} label(s)` + (health.katex ? "" : " · KaTeX not bundled: LaTeX shown as typed");
    $("rerank").disabled = !health.reranker;
    if (!health.reranker) $("rerank").checked = false;
    $("top-k").max = health.max_top_k;
    $("auth").hidden = true;
  } catch (err) {
    $("health").textContent = "server: " + err.message;
  }
}

function bar(fraction, className, label) {
  const outer = el("span", null, "bar " + className);
  outer.title = label;
  const inner = el("span");
  inner.style.width = Math.max(2, Math.round(100 * Math.min(1, Math.max(0, fraction)))) + "%";
  outer.appendChild(inner);
  return outer;
}

function showResults(result, item, reranked) {
  const list = $("results");
  list.replaceChildren();
  const entries = result.misconceptions;
  $("results-empty").hidden = entries.length > 0;
  $("results-meta").textContent = `(${reranked ? "retriever + reranker" : "retriever only"}, answer ${item.wrong_answer})`;
  // Bars show each model's own score on its own scale: the retriever's relative to this list (the reranked
  // block's fused scores and the retriever scores below it are not on one scale), the reranker's probability as is.
  const scores = entries.map((e) => e.retriever_score);
  const top = Math.max(...scores), bottom = Math.min(...scores);
  for (const entry of entries) {
    const li = el("li", null, "result");
    li.dataset.misconceptionId = entry.misconception_id;
    li.appendChild(el("span", entry.rank, "rank"));
    const body = el("div", null, "body");
    const name = el("div", entry.misconception_name, "name");
    body.appendChild(name);
    const scoresRow = el("div", null, "scores");
    // Relative within this list: the top suggestion fills the bar.
    scoresRow.appendChild(bar(top > bottom ? (entry.retriever_score - bottom) / (top - bottom) : 1, "score",
      "retriever score, relative to this list"));
    scoresRow.appendChild(el("span", `retriever ${entry.retriever_score.toFixed(3)}`, "num"));
    if (entry.reranker_score !== null) {
      scoresRow.appendChild(bar(entry.reranker_score, "reranker", "reranker probability"));
      scoresRow.appendChild(el("span", `reranker ${entry.reranker_score.toFixed(3)} · fused ${entry.score.toFixed(3)}`,
        "num"));
    }
    body.appendChild(scoresRow);
    li.appendChild(body);
    const accept = el("button", "Accept", "accept");
    accept.type = "button";
    accept.addEventListener("click", () => acceptLabel(entry, li, accept));
    li.appendChild(accept);
    list.appendChild(li);
    renderMath(name);
  }
}

async function suggest(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  const item = readItem();
  const rerank = $("rerank").checked && !$("rerank").disabled;
  const topK = parseInt($("top-k").value, 10) || 25;
  $("suggest").disabled = true;
  $("suggest").textContent = "Ranking…";
  try {
    const response = await api("/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ items: [item], top_k: topK, rerank }),
    });
    const data = await response.json();
    lastItem = item;
    lastRerank = data.reranked;
    showResults(data.results[0], item, data.reranked);
  } catch (err) {
    $("form-error").textContent = err.message;
  } finally {
    $("suggest").disabled = false;
    $("suggest").textContent = "Suggest misconceptions";
  }
}

async function acceptLabel(entry, li, button) {
  $("form-error").textContent = "";
  const labeller = $("labeller").value.trim();
  if (!labeller) {
    $("form-error").textContent = "Enter your name first: every label records who made it.";
    $("labeller").focus();
    return;
  }
  localStorage.setItem("eedi-labeller", labeller);
  button.disabled = true;
  try {
    await api("/labels", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(Object.assign({}, lastItem, {
        misconception_id: entry.misconception_id, labeller, rerank: lastRerank,
      })),
    });
    for (const other of document.querySelectorAll("#results li.accepted")) other.classList.remove("accepted");
    li.classList.add("accepted");
    button.textContent = "Accepted";
    await Promise.all([loadLabels(), loadHealth()]);
  } catch (err) {
    $("form-error").textContent = err.message;
    button.disabled = false;
  }
}

async function loadLabels() {
  try {
    const labels = await (await api("/labels?limit=50")).json();
    const body = document.querySelector("#labels tbody");
    body.replaceChildren();
    for (const label of labels) {
      const tr = el("tr");
      tr.dataset.labelId = label.label_id;
      const question = label.question_text.length > 120 ? label.question_text.slice(0, 117) + "…" : label.question_text;
      const cells = [label.label_id, label.created_at.replace("T", " ").slice(0, 19), label.labeller, question,
        `${label.wrong_answer}: ${label.wrong_answer_text}`, `${label.misconception_id} ${label.misconception_name}`,
        label.model_rank === null ? "not ranked" : label.model_rank];
      for (const value of cells) tr.appendChild(el("td", value));
      body.appendChild(tr);
      renderMath(tr);
    }
    $("labels-count").textContent = `(latest ${labels.length})`;
  } catch (err) {
    $("labels-count").textContent = err.message;
  }
}

async function download() {
  // fetch + blob, not a plain link: a link cannot carry the bearer token.
  try {
    const blob = await (await api("/labels.csv")).blob();
    const url = URL.createObjectURL(blob);
    const link = el("a");
    link.href = url;
    link.download = "train.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (err) {
    $("form-error").textContent = err.message;
  }
}

function start() {
  $("labeller").value = localStorage.getItem("eedi-labeller") || "";
  for (const input of document.querySelectorAll("#question, #answer-a, #answer-b, #answer-c, #answer-d")) {
    input.addEventListener("input", updatePreview);
  }
  $("question-form").addEventListener("submit", suggest);
  $("download").addEventListener("click", download);
  $("token-save").addEventListener("click", () => {
    token = $("token").value.trim();
    sessionStorage.setItem("eedi-token", token);
    loadHealth();
    loadLabels();
  });
  // The same letter cannot be both correct and wrong: moving one moves the other off it.
  for (const letter of LETTERS) {
    $("correct-" + letter.toLowerCase()).addEventListener("change", () => {
      if ($("wrong-" + letter.toLowerCase()).checked) {
        const other = LETTERS.find((x) => x !== letter);
        $("wrong-" + other.toLowerCase()).checked = true;
      }
    });
    $("wrong-" + letter.toLowerCase()).addEventListener("change", () => {
      if ($("correct-" + letter.toLowerCase()).checked) {
        const other = LETTERS.find((x) => x !== letter);
        $("correct-" + other.toLowerCase()).checked = true;
      }
    });
  }
  // After the handlers above, so the preview shows the letters once they are consistent.
  for (const radio of document.querySelectorAll('input[name="correct"], input[name="wrong"]')) {
    radio.addEventListener("change", updatePreview);
  }
  updatePreview();
  loadHealth();
  loadLabels();
  document.body.dataset.ready = "1";
}

// `defer` scripts run in order after parsing: KaTeX (if bundled) is loaded before this runs.
start();
