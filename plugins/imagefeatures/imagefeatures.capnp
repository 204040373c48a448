# imagefeatures.capnp — what the imagefeatures plugin's `features` task returns for one image
# file. Hosts that call the task include the generated "imagefeatures.capnp.h".
#
# Every statistic is computed on the decoded 8-bit samples (0..255) of every pixel:
#  - PNG: palette images are expanded to RGB (RGBA if they carry transparency), gray images
#    below 8 bits are scaled to 8 bits, 16-bit samples are scaled down to 8 bits.
#  - JPEG: YCbCr is converted to RGB; grayscale stays one channel. CMYK/YCCK JPEGs are an
#    error (libjpeg-turbo cannot convert them to RGB).
@0xba6ec46623b64668;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("imagefeatures");

struct ImageFeatures {
  path @0 :Text;
  # The path the task was given, unchanged.

  format @1 :Text;
  # "png" or "jpeg", from the file's signature bytes (never from its name).

  width @2 :UInt32;
  height @3 :UInt32;

  channels @4 :UInt8;
  # Channels of the decoded samples: 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA.

  colorSpace @5 :Text;
  # "gray", "gray+alpha", "rgb" or "rgba": names the channels, in order.

  mean @6 :List(Float64);
  # Per channel (one entry per channel, in order): the mean sample value, 0..255.

  stddev @7 :List(Float64);
  # Per channel: the population standard deviation of the sample values.

  histogram @8 :List(UInt64);
  # HISTOGRAM_BINS (8) bins per channel, channel after channel: entry c * 8 + b counts the
  # pixels whose channel c sample v has v / 32 == b (bin b holds 32b .. 32b + 31). Each
  # channel's bins sum to width * height.

  brightness @9 :Float64;
  # Mean luma, 0..255: Rec. 601 weights 0.299 R + 0.587 G + 0.114 B for RGB(A), the gray
  # sample itself for gray(+alpha). Alpha is ignored.
}

const histogramBins :UInt32 = 8;
