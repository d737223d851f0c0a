"""The HTML report's stylesheet, inlined into the page (nothing is fetched when it is viewed).

Verdict colours (a colour-blind-safe diverging set): same green, differs orange, error red,
n/a grey; text keeps the verdict too, so colour is never the only carrier."""

CSS = """
:root{--same:#d9f0d3;--differs:#fdb863;--error:#d6604d;--na:#d9d9d9;--ink:#1b1b1b;
--muted:#5b5b5b;--line:#d0d0d0;--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);
margin:0 auto;padding:1.5em 2em 4em;max-width:1500px}
h1{margin:.2em 0 .4em}h2{margin:1.8em 0 .4em;border-bottom:1px solid var(--line);
padding-bottom:.2em}h3{margin:1.2em 0 .4em;font-size:1em;color:var(--muted)}
code,.values td,.num,.whole{font-family:var(--mono);font-size:13px}
nav{margin:.8em 0;padding:.6em .9em;background:#f6f6f6;border-radius:6px}
nav details{display:inline-block;margin-left:.6em}nav ol{columns:4 14em;margin:.4em 0}
.note{background:#fff4e0;border-left:4px solid var(--differs);padding:.4em .8em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.4em 0}
th,td{border:1px solid var(--line);padding:2px 7px;text-align:left;vertical-align:top}
thead th{background:#f2f2f2}
td.num{text-align:right}
.v-same{background:var(--same)}.v-differs{background:var(--differs)}
.v-error{background:var(--error);color:#fff}.v-na{background:var(--na)}
.v-none{color:var(--muted);text-align:center}
.values td.v-same{background:none}
.values td.v-error a,.v-error summary{color:#fff}
.heatmap td{text-align:center;min-width:4.2em;padding:0}
.heatmap td a{display:block;padding:3px 6px;color:inherit;text-decoration:none}
.heatmap td a:hover{outline:2px solid var(--ink)}
.heatmap th.sc{font-weight:normal;white-space:nowrap}
.heatmap th.sc a{color:var(--ink)}
.legend{list-style:none;padding:0;display:flex;gap:1.4em;flex-wrap:wrap}
.swatch{display:inline-block;width:1.1em;height:1.1em;vertical-align:-.2em;margin-right:.4em;
border:1px solid #999}
.values td{white-space:nowrap}
details summary{cursor:pointer}
details[open]>summary{font-weight:bold}
.whole{display:block;white-space:pre-wrap;word-break:break-all;max-width:60ch;
background:#fff;color:var(--ink);padding:.3em;border:1px solid var(--line)}
.msg{white-space:pre-wrap;max-width:70ch}
.values .msg{background:#fff;color:var(--ink);padding:.3em;border:1px solid var(--line);
white-space:pre-wrap;min-width:30ch}
.diffs td{font-size:14px}
.matrix td.other{background:#fff4e0;font-weight:600}
th:target{background:#ffd54f;outline:3px solid #f0a000}
.values th[id]{scroll-margin-top:3.2em;scroll-margin-left:310px}
.values .k0,.values .k1,.values .k2{position:sticky;background:#fff;z-index:1}
.values th.k0,.values th.k1,.values th.k2{background:#f2f2f2}
.values .k0{left:0;min-width:46px;max-width:46px}
.values .k1{left:46px;min-width:106px;max-width:106px}
.values .k2{left:152px;min-width:150px;max-width:150px;box-shadow:2px 0 0 var(--line)}
section.scenario:target h2{background:#fff7d6}
.scenario h2 a.up{font-size:.7em;text-decoration:none;color:var(--muted);margin-left:.4em}
.title{font-weight:600;margin:.2em 0}.desc{color:var(--muted);max-width:100ch}
.agree{color:#2d6a2d}
figure.plot{margin:.6em 0}figure.plot svg{max-width:100%;height:auto}
figcaption{color:var(--muted);font-size:13px;max-width:110ch}
"""
