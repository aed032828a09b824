"""Inline stylesheet of the audience report (system fonts only: nothing is fetched when the page is viewed)."""

from __future__ import annotations

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f6f8;color:#1f2933;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"DejaVu Sans",Arial,sans-serif}
main{max-width:1220px;margin:0 auto;padding:20px 24px 40px}
header h1{margin:0 0 2px;font-size:26px}
.sub{margin:0 0 14px;color:#52606d}
h2{font-size:20px;margin:28px 0 10px;border-bottom:2px solid #d9e2ec;padding-bottom:4px}
h3{font-size:15px;margin:0 0 8px}
.grid{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:16px}
.card{background:#fff;border:1px solid #d9e2ec;border-radius:8px;padding:14px 16px;margin:0}
.wide{grid-column:1 / -1}
.chart img{display:block;width:100%;height:auto;max-width:100%}
.chart.wide img{max-width:1100px;margin:0 auto}
figcaption,.caption{color:#52606d;font-size:13px;margin:8px 0 0}
.note{border-style:dashed;background:#fbfcfd}
.note p{color:#52606d;margin:0}
.kpis{display:grid;grid-template-columns:repeat(6,minmax(0,1fr));gap:12px;margin:6px 0 4px}
.kpi{background:#fff;border:1px solid #d9e2ec;border-radius:8px;padding:12px}
.kpi .value{font-size:24px;font-weight:700}
.kpi .label{font-size:12px;color:#52606d}
.kpi.good{border-left:6px solid #3f9142}
.kpi.bad{border-left:6px solid #c0392b}
.warning{background:#fff4e5;border:1px solid #f0ad4e;border-radius:6px;padding:8px 12px;margin:8px 0}
.alert{background:#fdecea;border-color:#c0392b}
.alert p,.alert ul{margin:2px 0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid #e4e7eb;text-align:right;vertical-align:top}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
th{background:#f0f4f8;font-weight:600}
footer{margin-top:28px;color:#52606d;font-size:12px}
@media (max-width:900px){.grid{grid-template-columns:1fr}.kpis{grid-template-columns:repeat(2,1fr)}}
"""
