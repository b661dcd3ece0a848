"""A script prefix that slows fpncli's decoding to 0.2 s an image, in a command run as a
subprocess and in its workers too (spawn runs the script again in each), so that a signal sent
once the first image is written lands with most of the run still to do."""

SLOW_DECODING = """
import sys, time
import fpncli.run.steps as steps

real = steps.load_image

def slow(path, **kwargs):
    time.sleep(0.2)
    return real(path, **kwargs)

steps.load_image = slow
"""
