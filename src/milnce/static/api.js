// Offline API reference: renders this server's OpenAPI document as plain HTML.
"use strict";

(function () {
  const root = document.getElementById("reference");

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function schemaText(s) {
    if (!s) return "";
    if (s.anyOf) return s.anyOf.map(schemaText).join(" | ");
    const parts = [s.type || (s.$ref ? s.$ref.split("/").pop() : "any")];
    if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
    if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
    if (s.maxLength !== undefined) parts.push(`≤ ${s.maxLength} chars`);
    if (s.default !== undefined) parts.push(`default ${JSON.stringify(s.default)}`);
    return parts.join(", ");
  }

  function render(spec) {
    root.replaceChildren();
    root.append(el("h1", null, `${spec.info.title} ${spec.info.version}`), el("p", "muted", spec.info.description || ""));
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const card = el("section", "endpoint");
        const head = el("h2");
        head.append(el("span", "method", method.toUpperCase()), el("code", null, path));
        card.append(head, el("p", null, op.summary || ""));
        if (op.description) card.append(el("p", "muted", op.description));
        if (op.parameters && op.parameters.length) {
          const table = el("table");
          const tr = el("tr");
          ["parameter", "in", "schema", "description"].forEach((h) => tr.append(el("th", null, h)));
          table.append(tr);
          op.parameters.forEach((p) => {
            const row = el("tr");
            row.append(el("td", null, p.name + (p.required ? " *" : "")), el("td", null, p.in),
                       el("td", null, schemaText(p.schema)), el("td", null, p.description || (p.schema && p.schema.description) || ""));
            table.append(row);
          });
          card.append(table);
        }
        if (op.requestBody && op.requestBody.content) {
          for (const [type, media] of Object.entries(op.requestBody.content)) {
            const props = Object.entries((media.schema && media.schema.properties) || {})
              .map(([name, s]) => `${name} (${s.format || s.type || "any"}): ${s.description || ""}`);
            card.append(el("p", null, `Body: ${type}` + (props.length ? ` with ${props.join("; ")}` : "")));
          }
        }
        const codes = Object.entries(op.responses || {}).map(([c, r]) => `${c} ${r.description || ""}`);
        if (codes.length) card.append(el("p", "muted", "Responses: " + codes.join(" · ")));
        root.append(card);
      }
    }
  }

  fetch("/openapi.json").then((r) => r.json()).then(render)
    .catch((e) => { root.replaceChildren(el("p", "status error", `Could not load /openapi.json: ${e.message}`)); });
})();
