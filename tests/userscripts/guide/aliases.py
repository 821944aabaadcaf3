import random
import string

import rtserver


class StringGenerator(object):
    @rtserver.expose(['generer', 'generar'])
    def generate(self, length=8):
        return ''.join(random.sample(string.hexdigits, int(length)))


if __name__ == '__main__':
    rtserver.quickstart(StringGenerator())
