import rtserver


def raw_wsgi_app(environ, start_response):
    status = '200 OK'
    response_headers = [('Content-type','text/plain')]
    start_response(status, response_headers)
    return ['Hello world!']


rtserver.tree.graft(raw_wsgi_app, '/')
rtserver.engine.signals.subscribe()
rtserver.engine.start()
rtserver.engine.block()
