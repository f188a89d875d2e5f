"""The browser's pages: server-rendered HTML, the charts as SVG, ANSI colours, CSRF for forms.
Routes register with the app through remoteci/routes.py.
May import: the shared top-level modules, remoteci.store, remoteci.web, remoteci.auth,
remoteci.history.
"""
