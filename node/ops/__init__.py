"""Operations: what an operator watches. Imports no other node package.

metrics.py   NodeMetrics: the Prometheus metrics (names are stable: dashboards use them)
http_api.py  HttpServer and the /metrics, /healthz, /status endpoint
systemd.py   SystemdNotifier: READY=1, STOPPING=1, watchdog pings (sd_notify)
log.py       configure_logging: structlog JSON lines or a console, stdlib loggers alike
"""
