import rtserver


def secureheaders():
    headers = rtserver.response.headers
    headers['X-Frame-Options'] = 'DENY'
    headers['X-XSS-Protection'] = '1; mode=block'
    headers['Content-Security-Policy'] = "default-src='self'"
    # only add Strict-Transport headers if we're actually using SSL
    if (rtserver.server.ssl_certificate != None and rtserver.server.ssl_private_key != None):
        headers['Strict-Transport-Security'] = 'max-age=31536000'  # one year


# set the priority according to your needs if you are hooking something
# else on the 'before_finalize' hook point.
rtserver.tools.secureheaders = rtserver.Tool('before_finalize', secureheaders, priority=60)


class Root:
    @rtserver.expose
    def index(self):
        rtserver.session['seen'] = True
        return "secured"


if __name__ == '__main__':
    import sys

    rtserver.quickstart(Root(), config=sys.argv[1] if len(sys.argv) > 1 else "secureheaders.conf")
