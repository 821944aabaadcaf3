"""Response timeouts and the timeout monitor, configured from an INI file."""
import time

import rtserver


class Root:
    @rtserver.expose
    def index(self):
        return str(rtserver.engine.timeout_monitor.frequency)

    @rtserver.expose
    def attributes(self):
        r = rtserver.response
        r.check_timeout()
        return f"{r.timeout} {r.timed_out} {r.time <= time.time()}"

    @rtserver.expose
    def slow(self):
        time.sleep(30)
        return "never"


if __name__ == '__main__':
    import sys

    if "--fast-monitor" in sys.argv:
        rtserver.quickstart(Root(), config={
            "global": {"engine.timeout_monitor.frequency": 0.5},
            "/slow": {"response.timeout": 1},
        })
    else:
        rtserver.quickstart(Root(), config="timeouts.conf")
