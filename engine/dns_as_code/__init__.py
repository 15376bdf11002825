"""DNS as code (`liveprism dns`): the records each tenant domain must publish (`records`: MX, SPF,
DMARC, DKIM, MTA-STS, TLS-RPT), rendered as BIND or octoDNS (`render`, `templates/`), and compared
with what live DNS answers (`drift`, `dns --check` and the admin API's monitor)."""
