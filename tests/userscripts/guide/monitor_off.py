import time

import rtserver


class Root:
    @rtserver.expose
    def slow(self):
        time.sleep(1.5)  # past response.timeout, but no monitor is watching
        return "finished"


if __name__ == '__main__':
    rtserver.quickstart(Root(), config="monitor_off.conf")
