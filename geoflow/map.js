/* geoflow's map page: draws a geoflow.scene.Scene handed over as GeoJSON by geoflow.render.
 *
 * Everything from the data is put into the page with textContent, never as HTML.
 * Hooks for tests: geoflow.map (the Leaflet map), geoflow.counts (features per layer),
 * geoflow.panels() (rectangles of the panels over the map), geoflow.placeLabels().
 */
var geoflow = (function () {
  "use strict";
  var counts = {};
  var labelItems = [];
  var controls = {};
  var SVGNS = "http://www.w3.org/2000/svg";

  function fmt(v, kind) {
    if (v === null || v === undefined || v === "") return null;
    if (kind === "int") return Math.round(v).toLocaleString("en-US");
    if (kind === "pct") return (100 * v).toFixed(1) + "%";
    if (kind === "days") return Math.round(v).toLocaleString("en-US") + " days";
    return String(v);
  }
  function card(p, spec, brief) {
    var box = document.createElement("div");
    box.className = "gf-card";
    var head = document.createElement("div");
    head.className = "gf-card-title";
    head.textContent = fmt(p[spec.title]) || spec.fallback;
    box.appendChild(head);
    var table = document.createElement("table");
    spec.rows.slice(0, brief ? spec.brief : spec.rows.length).forEach(function (r) {
      var v = fmt(p[r[1]], r[2]);
      if (v === null) return;
      var tr = table.insertRow();
      var th = document.createElement("th");
      th.textContent = r[0];
      tr.appendChild(th);
      tr.insertCell().textContent = v;
    });
    box.appendChild(table);
    return box;
  }
  function bind(layer, p, spec) {
    layer.bindTooltip(function () { return card(p, spec, true); }, {sticky: true});
    layer.bindPopup(function () { return card(p, spec, false); }, {maxWidth: 340});
  }
  function pane(map, name, z) {
    api.map = map;
    if (!map.getPane(name)) map.createPane(name).style.zIndex = z;
    return name;
  }

  /* ---------------------------------------------------------------- layers */

  function states(map, data, o) {
    var p = pane(map, "gfStates", 350);
    return L.geoJSON(data, {
      pane: p,
      style: function (f) {
        return {color: o.stroke, weight: 0.7, opacity: 1, fillOpacity: 1,
                fillColor: f.properties.fill, className: "gf-state"};
      },
      onEachFeature: function (f, l) { bind(l, f.properties, o.spec); }
    });
  }
  function arrowDefs(svg, colour) {
    if (svg.querySelector("#gf-arrow-s")) return;
    var defs = document.createElementNS(SVGNS, "defs");
    [["s", 9], ["m", 13], ["l", 19], ["xl", 27]].forEach(function (a) {
      var m = document.createElementNS(SVGNS, "marker");
      m.setAttribute("id", "gf-arrow-" + a[0]);
      m.setAttribute("viewBox", "0 0 10 10");
      m.setAttribute("refX", "9");
      m.setAttribute("refY", "5");
      m.setAttribute("markerUnits", "userSpaceOnUse");
      m.setAttribute("markerWidth", a[1]);
      m.setAttribute("markerHeight", a[1]);
      m.setAttribute("orient", "auto");
      var tri = document.createElementNS(SVGNS, "path");
      tri.setAttribute("d", "M0,0 L10,5 L0,10 z");
      tri.setAttribute("fill", colour);
      tri.setAttribute("class", "gf-arrow");
      m.appendChild(tri);
      defs.appendChild(m);
    });
    svg.insertBefore(defs, svg.firstChild);
  }
  function arrowSize(w) { return w < 3 ? "s" : w < 7 ? "m" : w < 12 ? "l" : "xl"; }
  function dashFor(w) {
    // dashes grow with the line so a wide modelled leg still reads as dashed
    return Math.max(6, Math.round(2.2 * w)) + " " + Math.max(4, Math.round(1.3 * w));
  }
  // Legs are drawn thinner on a narrow screen (the whole country in 390 px): one factor for
  // the legs and the legend's line samples, so the legend still matches what is drawn.
  function widthScale(map) { return Math.min(1, Math.max(0.55, map.getSize().x / 1000)); }
  function scaleLegend(k) {
    document.querySelectorAll("#gf-legend svg line").forEach(function (line) {
      var w = +line.getAttribute("stroke-width");
      line.setAttribute("stroke-width", Math.max(1, w * k).toFixed(2));
    });
  }
  function flows(map, data, o) {
    var p = pane(map, "gfFlows", 420);
    counts.flows = data.features.length;
    var k = widthScale(map);
    api.widthScale = k;
    if (k < 1) scaleLegend(k);
    data.features.forEach(function (f) { f.properties.px = Math.max(1.2, f.properties.w * k); });
    // a white casing under every leg keeps crossing legs apart and off the states
    var casing = L.geoJSON(data, {
      pane: pane(map, "gfCasing", 415), interactive: false,
      style: function (f) {
        return {color: "#ffffff", weight: f.properties.px + 2.5, opacity: 0.7,
                lineCap: f.properties.k === "known" ? "round" : "butt",
                className: "gf-casing"};
      }
    });
    var lines = L.geoJSON(data, {
      pane: p,
      style: function (f) {
        var k = f.properties.k === "known" ? "known" : "modelled";
        var w = f.properties.px;
        return {color: f.properties.c || o.colour, weight: w, opacity: o.opacity,
                lineCap: k === "known" ? "round" : "butt",
                dashArray: k === "known" ? null : dashFor(w),
                className: "gf-flow gf-" + k + " gf-leg-" + f.properties.side};
      },
      onEachFeature: function (f, l) {
        bind(l, f.properties, o.spec);
        if (!f.properties.a) return;
        l.on("add", function () {
          var path = l.getElement();
          arrowDefs(path.ownerSVGElement, o.colour);
          path.setAttribute("marker-end", "url(#gf-arrow-" + arrowSize(f.properties.px) + ")");
        });
      }
    });
    return L.layerGroup([casing, lines]);
  }
  // Circles shrink when zoomed out (a national view on a phone) and grow a little when
  // zoomed in; their areas stay proportional to guns.
  function radiusFactor(zoom) { return Math.min(1.25, Math.max(0.5, Math.pow(2, (zoom - 4.5) / 2))); }
  function points(map, data, o) {
    var p = pane(map, "gfPoints", 430);
    counts[o.kind] = data.features.length;
    var group;
    map.on("zoomend", function () {
      var k = radiusFactor(map.getZoom());
      if (group) group.eachLayer(function (l) { l.setRadius(l.feature.properties.r * k); });
    });
    group = L.geoJSON(data, {
      pointToLayer: function (f, ll) {
        var hollow = !!f.properties.hollow;
        return L.circleMarker(ll, {pane: p, radius: f.properties.r * radiusFactor(map.getZoom()),
          color: hollow ? o.fill : o.stroke, weight: hollow ? 1.8 : o.weight,
          fillColor: hollow ? "#ffffff" : o.fill, fillOpacity: hollow ? 0.55 : o.fillOpacity,
          className: "gf-" + o.kind + (hollow ? " gf-hollow" : "")});
      },
      onEachFeature: function (f, l) { bind(l, f.properties, o.spec); }
    });
    return group;
  }

  /* ---------------------------------------------------------------- labels */

  function labels(map, items) {
    var p = pane(map, "gfLabels", 440);
    var box = map.getPane(p);
    box.style.pointerEvents = "none";
    labelItems = items.map(function (it) {
      var el = document.createElement("div");
      el.className = "gf-label gf-label-" + it.k;
      el.textContent = it.t;
      el.style.visibility = "hidden";
      box.appendChild(el);
      return {el: el, ll: L.latLng(it.lat, it.lon), k: it.k, z: it.z, r: it.r || 4,
              w: 0, h: 0};
    });
    counts.labels = labelItems.length;
    map.on("zoomend moveend resize", placeLabels);
    return labelItems;
  }
  function overlaps(a, b) {
    return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
  }
  function placeLabels() {
    var map = api.map;
    if (!map || !labelItems.length) return;
    var size = map.getSize();
    var taken = panels().map(function (r) {
      return {x: r.x - 4, y: r.y - 4, w: r.w + 8, h: r.h + 8};
    });
    var zoom = map.getZoom();
    // fewer labels when zoomed out: a share of the screen's area is all they may take
    var budget = size.x * size.y * (zoom < 5 ? 0.045 : zoom < 6.5 ? 0.07 : 0.1);
    var used = 0;
    labelItems.forEach(function (it) {
      var el = it.el;
      if (!it.w) { it.w = el.offsetWidth; it.h = el.offsetHeight; }
      el.style.visibility = "hidden";
      el.removeAttribute("data-shown");
      if (zoom < it.z || used + it.w * it.h > budget) return;
      var c = map.latLngToContainerPoint(it.ll);
      var g = it.r + 2;
      var tries = [[c.x + g, c.y - it.h / 2], [c.x - g - it.w, c.y - it.h / 2],
                   [c.x - it.w / 2, c.y - g - it.h], [c.x - it.w / 2, c.y + g]];
      for (var i = 0; i < tries.length; i++) {
        var b = {x: tries[i][0], y: tries[i][1], w: it.w, h: it.h};
        if (b.x < 2 || b.y < 2 || b.x + b.w > size.x - 2 || b.y + b.h > size.y - 2) continue;
        if (taken.some(function (t) { return overlaps(b, t); })) continue;
        taken.push({x: b.x - 2, y: b.y - 1, w: b.w + 4, h: b.h + 2});
        used += it.w * it.h;
        var origin = map.containerPointToLayerPoint([b.x, b.y]);
        L.DomUtil.setPosition(el, origin);
        el.style.visibility = "visible";
        el.setAttribute("data-shown", "1");
        return;
      }
    });
  }

  /* ---------------------------------------------------------------- panels and view */

  function panel(map, id, position) {
    var el = document.getElementById(id);
    if (!el) return;
    var Panel = L.Control.extend({onAdd: function () {
      L.DomEvent.disableClickPropagation(el);
      L.DomEvent.disableScrollPropagation(el);
      return el;
    }});
    controls[id] = new Panel({position: position}).addTo(map);
    el.addEventListener("toggle", function () { placeLabels(); });
    if (id === "gf-legend") {
      legendRoom(map);
      map.on("resize", function () { legendRoom(map); });
    }
  }
  // The legend grows up from the bottom right corner, scrolling, at most to the controls of
  // the top right one (zoom, layers): it never covers the button that switches layers.
  function legendRoom(map) {
    var el = document.getElementById("gf-legend");
    var corner = map.getContainer().querySelector(".leaflet-top.leaflet-right");
    if (!el || !corner) return;
    var room = el.getBoundingClientRect().bottom - corner.getBoundingClientRect().bottom - 10;
    el.style.setProperty("--gf-room", Math.max(60, Math.floor(room)) + "px");
  }
  // Rectangles (in map-container pixels) of everything drawn over the map: our panels and
  // Leaflet's controls.
  function panels() {
    var map = api.map;
    if (!map) return [];
    var base = map.getContainer().getBoundingClientRect();
    var els = map.getContainer().querySelectorAll(".gf-panel, .leaflet-control");
    var out = [];
    els.forEach(function (el) {
      if (el.closest(".gf-panel") && el.closest(".gf-panel") !== el) return;
      var r = el.getBoundingClientRect();
      if (r.width < 1 || r.height < 1) return;
      out.push({id: el.id || el.className, x: r.left - base.left, y: r.top - base.top,
                w: r.width, h: r.height});
    });
    return out;
  }
  // The padding that leaves the data the largest zoom: each panel, sitting in a corner,
  // takes either a strip across (top/bottom) or a strip down (left/right) of the view.
  function padding(map, bounds) {
    var size = map.getSize();
    var rects = panels();
    var best = null;
    for (var mask = 0; mask < (1 << rects.length); mask++) {
      var pad = {top: 10, bottom: 10, left: 10, right: 10};
      rects.forEach(function (r, i) {
        var down = (mask >> i) & 1;
        var left = r.x + r.w / 2 < size.x / 2, top = r.y + r.h / 2 < size.y / 2;
        if (down) {
          if (left) pad.left = Math.max(pad.left, r.x + r.w + 10);
          else pad.right = Math.max(pad.right, size.x - r.x + 10);
        } else if (top) pad.top = Math.max(pad.top, r.y + r.h + 10);
        else pad.bottom = Math.max(pad.bottom, size.y - r.y + 10);
      });
      var free = L.point(size.x - pad.left - pad.right, size.y - pad.top - pad.bottom);
      if (free.x < 60 || free.y < 60) continue;
      var zoom = map.getBoundsZoom(bounds, false, L.point(pad.left + pad.right,
                                                            pad.top + pad.bottom));
      var score = zoom * 1e7 + free.x * free.y;
      if (!best || score > best.score) best = {score: score, pad: pad};
    }
    return best ? best.pad : {top: 10, bottom: 10, left: 10, right: 10};
  }
  function fit(map, bounds) {
    var size = map.getSize();
    var small = size.x < 700 || size.y < 560;
    document.body.classList.toggle("gf-small", small);
    legendRoom(map);  // before the padding, which measures the legend
    if (small) {
      ["gf-legend", "gf-footer"].forEach(function (id) {
        var el = document.getElementById(id);
        if (el) el.removeAttribute("open");
      });
      // the credits go under the folded footer, leaving the legend button its corner
      if (map.attributionControl) map.attributionControl.setPosition("bottomleft");
      if (controls["gf-footer"]) controls["gf-footer"].setPosition("bottomleft");
    }
    var b = L.latLngBounds(bounds);
    var pad = padding(map, b);
    map.fitBounds(b, {paddingTopLeft: [pad.left, pad.top],
                      paddingBottomRight: [pad.right, pad.bottom], animate: false});
    api.padding = pad;
    placeLabels();
  }
  function tiles(map) {
    // When the reader switches the online tiles on, let them show through the choropleths.
    map.on("overlayadd overlayremove", function (e) {
      var p = map.getPane("gfStates");
      if (p && e.layer instanceof L.TileLayer) {
        p.style.opacity = e.type === "overlayadd" ? "0.55" : "";
      }
    });
  }
  function attribution(map, texts) {
    var control = map.attributionControl;
    if (!control) return;
    control.setPrefix(false);
    texts.forEach(function (t) {
      var span = document.createElement("span");
      span.textContent = t;
      control.addAttribution(span.outerHTML);
    });
  }
  var api = {states: states, flows: flows, points: points, labels: labels, panel: panel,
             fit: fit, tiles: tiles, attribution: attribution, panels: panels,
             placeLabels: placeLabels, counts: counts, map: null, padding: null,
             widthScale: 1};
  return api;
})();
