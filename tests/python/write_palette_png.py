"""A palette-mode ("P") PNG for the decoder tests: write_palette_png.py OUT.png"""
import sys

from PIL import Image

im = Image.new("P", (40, 30))
im.putpalette([(i * 37) % 256 for i in range(768)])
im.putdata([(x * 7 + y * 3) % 256 for y in range(30) for x in range(40)])
im.save(sys.argv[1])
