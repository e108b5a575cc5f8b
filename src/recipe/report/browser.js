// report.html's script: charts (Plotly, inlined above), the record browser, the error browser.
// Every value from the run is put into the page with textContent, never as HTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var PAGE = 20;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // ---- charts ----
  data.charts.forEach(function (chart) {
    var div = document.getElementById(chart.id);
    if (!div) return;
    var layout = Object.assign({autosize: true, font: {size: 11}}, chart.layout);
    Plotly.newPlot(div, chart.data, layout, {displayModeBar: false, responsive: true});
  });

  // ---- records ----
  var all = data.sample;
  var byId = {};
  all.forEach(function (item) {
    var id = item.r && item.r._id;
    if (typeof id === "string") byId[id] = item;
  });
  var shown = all, page = 0, focus = null;
  var list = document.getElementById("records"), note = document.getElementById("rec-note");
  var search = document.getElementById("rec-search"), pageLabel = document.getElementById("rec-page");
  var showAll = document.getElementById("rec-all");
  var lowered = new Map();

  function textOf(item) {
    var text = lowered.get(item);
    if (text === undefined) {
      text = JSON.stringify(item.r).toLowerCase();
      lowered.set(item, text);
    }
    return text;
  }

  function card(item) {
    var r = item.r || {};
    var box = el("div", "rec" + (item === focus ? " focus" : ""));
    box.dataset.id = typeof r._id === "string" ? r._id : "";
    var head = el("div", "head");
    head.appendChild(el("span", null, "#" + item.n));
    head.appendChild(el("span", "rid", "_id " + r._id));
    var parent = el("span", null, "_parent ");
    if (r._parent === null || r._parent === undefined) {
      parent.appendChild(el("span", null, "none (a root record)"));
    } else {
      var link = el("a", "parent", r._parent);
      link.addEventListener("click", function () { openParent(item, r._parent); });
      parent.appendChild(link);
    }
    head.appendChild(parent);
    if (r._source !== undefined) head.appendChild(el("span", "source", "_source " + r._source));
    box.appendChild(head);
    if (item.clipped && item.clipped.length) {
      box.appendChild(el("div", "clip", "clipped for display: " + item.clipped.map(function (c) {
        return c.path + (c.chars ? " (" + c.chars + " characters)" : c.items ? " (" + c.items + " items)" :
          c.bytes ? " (" + c.bytes + " bytes)" : " (deeper levels)");
      }).join(", ")));
    }
    var fields = {};
    Object.keys(r).forEach(function (k) { if (k !== "_id" && k !== "_parent" && k !== "_source") fields[k] = r[k]; });
    box.appendChild(el("pre", "body", JSON.stringify(fields, null, 1)));
    return box;
  }

  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    list.textContent = "";
    shown.slice(page * PAGE, page * PAGE + PAGE).forEach(function (item) { list.appendChild(card(item)); });
    pageLabel.textContent = "page " + (page + 1) + " of " + pages + " (" + shown.length + " records)";
    document.getElementById("rec-prev").disabled = page === 0;
    document.getElementById("rec-next").disabled = page >= pages - 1;
  }

  function filter() {
    var q = search.value.trim().toLowerCase();
    focus = null;
    note.textContent = "";
    showAll.hidden = !q;
    shown = q ? all.filter(function (item) { return textOf(item).indexOf(q) >= 0; }) : all;
    page = 0;
    render();
  }

  function openParent(child, parentId) {
    var parent = byId[parentId];
    if (!parent) {
      var siblings = all.filter(function (item) { return item.r && item.r._parent === parentId; });
      note.textContent = "The parent " + parentId + " is not among the records here: it is an intermediate " +
        "record (not written to the output) or outside the sample. Showing its children here (" + siblings.length + ").";
      shown = siblings;
    } else {
      note.textContent = "Record " + parentId + ", the parent of " + child.r._id + ".";
      shown = [parent];
      focus = parent;
    }
    showAll.hidden = false;
    page = 0;
    render();
    list.scrollIntoView();
  }

  search.addEventListener("input", filter);
  document.getElementById("rec-prev").addEventListener("click", function () { page -= 1; render(); });
  document.getElementById("rec-next").addEventListener("click", function () { page += 1; render(); });
  showAll.addEventListener("click", function () { search.value = ""; filter(); });
  render();

  // ---- errors ----
  var errors = document.getElementById("errors");
  if (errors) {
    data.errors.forEach(function (group) {
      var box = el("details", "group");
      box.dataset.errorClass = group["class"];
      var stages = Object.keys(group.stages).map(function (s) { return s + ": " + group.stages[s]; }).join(", ");
      box.appendChild(el("summary", null, group["class"] + " — " + group.count + " records (stage " + stages + ")"));
      group.examples.forEach(function (example) {
        var e = example.error || {};
        box.appendChild(el("div", "head", "stage " + e.stage + " · _id " + example.id + (e.where ? " · " + e.where : "")));
        box.appendChild(el("pre", "message", e.message));
        box.appendChild(el("pre", "body", JSON.stringify(example.record, null, 1)));
      });
      errors.appendChild(box);
    });
  }
})();
