"""Operations: what an operator watches. Imports no other node package.

metrics.py   NodeMetrics: the Prometheus metrics (names are stable: dashboards use them)
http_api.py  HttpServer and the /, /metrics, /healthz, /status, POST /pause and /resume endpoint
http_limits.py  bounded_protocol: what an HTTP client may hold (a request head's time, a reader's, connections)
status_page.html  the status page served at / (self-contained: inline CSS, JS and SVG chart; polls /status)
activity.py  NodeActivity: tasks and tokens per minute for the last hour and the latest tasks, bounded
systemd.py   SystemdNotifier: READY=1, STOPPING=1, watchdog pings (sd_notify)
log.py       configure_logging: structlog JSON lines or a console, stdlib loggers alike
inert_text.py  inert: another party's text with what a terminal would act on escaped (console logs, the CLI)
open_files.py  raise_open_files_limit: the soft open-files limit raised to the hard one at start
control_token.py  the token POST /pause and /resume require, written to the data dir at each start
data_lock.py DataDirLock: one running node (or gateway) per data directory (an flock, dropped when its process ends)
"""
