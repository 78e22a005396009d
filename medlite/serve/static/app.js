// medlite's page: send each form to the JSON API and show the result. Plain JavaScript,
// no external scripts, so the page works on a network without internet.
"use strict";

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function number(value, digits = 2) {
  return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);
}

function definitionList(target, rows) {
  target.replaceChildren();
  for (const [term, value] of rows) {
    target.append(element("dt", {}, term), element("dd", {}, String(value)));
  }
}

function table(target, header, rows) {
  target.replaceChildren();
  const head = element("tr");
  header.forEach((h) => head.append(element("th", {}, h)));
  target.append(head);
  for (const row of rows) {
    const line = element("tr");
    row.forEach((cell) => {
      const td = element("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = String(cell);
      line.append(td);
    });
    target.append(line);
  }
}

const show = {
  segment(section, data, form) {
    const file = form.querySelector("input[type=file]").files[0];
    const base = section.querySelector("img.base");
    base.src = URL.createObjectURL(file);
    const mask = section.querySelector("img.mask");
    mask.src = "data:image/png;base64," + data.overlay_png;
    const slider = section.querySelector("input.opacity");
    mask.style.opacity = slider.value / 100;
    slider.oninput = () => { mask.style.opacity = slider.value / 100; };
    const rows = [["Lesion area", `${data.area_pixels} pixels`],
                  ["Largest diameter", `${number(data.largest_diameter_pixels, 1)} pixels`]];
    if (data.area_mm2 !== null) {
      rows.push(["Lesion area (mm²)", number(data.area_mm2, 2)],
                ["Largest diameter (mm)", number(data.largest_diameter_mm, 2)]);
    }
    rows.push(["Image", `${data.width} x ${data.height} pixels`]);
    definitionList(section.querySelector(".measurements"), rows);
    const link = section.querySelector("a.download");
    link.href = "data:image/png;base64," + data.mask_png;
    link.download = file.name.replace(/\.[^.]*$/, "") + "_mask.png";
  },

  classify(section, data) {
    let text = `Predicted: ${data.predicted} (probability ${number(data.confidence)})`;
    if (data.tiles) text += ` from ${data.tiles} tissue tiles`;
    if (data.prediction_set) {
      text += `; ${Math.round(100 * data.coverage)}% prediction set: ` +
        `{${data.prediction_set.join(", ")}}`;
    }
    if (data.flagged !== null && data.flagged !== undefined) {
      text += `; ${data.flag_class}: ${data.flagged ? "flagged" : "not flagged"} at the ` +
        `${Math.round(100 * data.flag_specificity)}%-specificity cut`;
    }
    section.querySelector(".predicted").textContent = text;
    const bars = section.querySelector(".bars");
    bars.replaceChildren();
    for (const [name, p] of Object.entries(data.probabilities)) {
      const row = element("div", {class: "bar-row"});
      const bar = element("div", {class: "bar"});
      bar.style.width = `${(100 * p).toFixed(1)}%`;
      if (name === data.predicted) bar.classList.add("top");
      const track = element("div", {class: "track"});
      track.append(bar);
      row.append(element("span", {class: "label"}, name), track,
                 element("span", {class: "value"}, number(p)));
      bars.append(row);
    }
    const note = section.querySelector(".note");
    note.textContent = data.note || "";
    note.classList.toggle("flag", data.low_confidence);
  },

  pasi(section, data) {
    let score = `PASI ${number(data.pasi, 1)}`;
    if (data.interval) {
      score += `, ${Math.round(100 * data.coverage)}% interval ` +
        `${number(data.interval[0], 1)}–${number(data.interval[1], 1)}`;
    }
    if (data.clear_probability !== null && data.clear_probability !== undefined) {
      score += `, clear skin ${Math.round(100 * data.clear_probability)}%`;
    }
    section.querySelector(".pasi-score").textContent = `${score} (${data.severity})`;
    const regions = Object.keys(data.regional);
    const header = ["region", "regional score"];
    const components = data.components || {};
    const names = regions.length && components[regions[0]] ? Object.keys(components[regions[0]]) : [];
    header.push(...names);
    table(section.querySelector("table.regional"), header, regions.map((r) => [
      r, number(data.regional[r], 1), ...names.map((n) => number(components[r][n], 2))]));
    const trajectory = section.querySelector(".trajectory");
    trajectory.replaceChildren();
    if (data.trajectory.length) {
      trajectory.append(element("h3", {}, `Visits of ${data.trajectory[0].subject}`));
      const list = element("table");
      table(list, ["visit", "PASI", "% change from baseline", "PASI50", "PASI75", "PASI90", ""],
        data.trajectory.map((v) => {
          const remove = element("button", {type: "button", class: "delete"}, "delete");
          remove.onclick = async () => {
            const response = await fetch(`/api/visits/${v.id}`, {method: "DELETE"});
            if (response.ok) remove.closest("tr").remove();
          };
          return [v.visit || v.created, number(v.pasi, 1),
                  v.percent_change === null ? "n/a" : `${number(v.percent_change, 1)} %`,
                  v.pasi50 ? "yes" : "no", v.pasi75 ? "yes" : "no", v.pasi90 ? "yes" : "no",
                  remove];
        }));
      trajectory.append(list);
    }
  },

  stress(section, data) {
    section.querySelector("img.plot").src = "data:image/png;base64," + data.plot_png;
    const s = data.summary;
    section.querySelector(".summary").textContent = Object.entries(s)
      .map(([k, v]) => `${k.replaceAll("_", " ")}: ${typeof v === "number" ? number(v) : v}`)
      .join(" · ");
    const link = section.querySelector("a.download");
    link.href = URL.createObjectURL(new Blob([data.windows_csv], {type: "text/csv"}));
  },
};

async function submit(event) {
  event.preventDefault();
  const form = event.target;
  const section = form.closest("section.run");
  const error = section.querySelector(".error");
  const result = section.querySelector(".result");
  const button = form.querySelector("button[type=submit]");
  error.hidden = true;
  button.disabled = true;
  const body = new FormData(form);
  for (const [key, value] of [...body.entries()]) {  // empty optional fields are not sent
    if (value === "" || (value instanceof File && !value.name && !value.size)) body.delete(key);
  }
  try {
    const endpoint = form.dataset.endpoint;
    const response = await fetch(`/api/runs/${encodeURIComponent(section.dataset.run)}/${endpoint}`,
                                 {method: "POST", body});
    const data = await response.json();
    if (!response.ok) throw new Error(data.detail || response.statusText);
    show[endpoint](section, data, form);
    result.hidden = false;
    section.dataset.state = "done";
  } catch (problem) {
    error.textContent = problem.message;
    error.hidden = false;
    section.dataset.state = "error";
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form.predict").forEach((form) => form.addEventListener("submit", submit));
});
