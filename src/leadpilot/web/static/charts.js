// Draw every chart whose figure JSON the server embedded (see leadpilot/web/charts.py); Plotly is served by us.
(function () {
  if (typeof Plotly === "undefined") { return; }
  document.querySelectorAll("[data-chart]").forEach(function (div) {
    var source = document.getElementById("chart-" + div.getAttribute("data-chart"));
    if (!source) { return; }
    var figure = JSON.parse(source.textContent);
    Plotly.newPlot(div, figure.data, figure.layout, { displayModeBar: false, responsive: true });
  });
})();
