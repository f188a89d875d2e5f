"""The pipeline page's styles, added to the pages' one stylesheet (allowed by its hash)."""

STYLE = """
.stages{display:flex;gap:1em;align-items:flex-start;overflow-x:auto;margin-top:1em}
.stage{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.5em .8em;min-width:14em}
.stage h3{font-size:1em;margin:.2em 0 .6em;display:flex;justify-content:space-between;gap:.5em}
.stage ul{list-style:none;margin:0;padding:0}.stage li{padding:.3em 0;border-top:1px solid #eaeef2}
.st-waiting{background:#afb8c1}
"""
