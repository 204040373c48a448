// imagefeatures — the seed's real-world job: decode a PNG or JPEG file with libpng or
// libjpeg-turbo and return its size, per-channel statistics and a colour histogram.
//
// Tasks (each takes the image's path as text, so a file of paths, one per line, is a valid
// input for `plugpool map imagefeatures features paths.txt`):
//   features(text path) -> ImageFeatures (imagefeatures.capnp): decodes every pixel
//   size(text path) -> (uint32 width, uint32 height): reads the header only
//
// Errors are task errors, never crashes:
//  - a file that cannot be opened or read throws std::system_error
//    ("cannot open PATH: No such file or directory");
//  - anything that is not a decodable PNG or JPEG — another format, a truncated or corrupt
//    file, a CMYK JPEG, an image of more than MAX_PIXEL_BYTES once decoded — throws
//    imagefeatures::ImageError naming the path and what the decoder said. Every libjpeg
//    warning (corrupt data, premature end of file) is an error too: libjpeg would otherwise
//    fill the missing part with grey and the features would silently be wrong.
//
// libpng and libjpeg report errors through callbacks that longjmp back to the setjmp in the
// one small function that made the failing library call (pngHeader, pngRows, jpegHeader,
// jpegStart, jpegRows). Those functions hold only trivially destructible locals that are not
// read after the jump, so the jump skips no destructor; the decoder state they work on is
// owned by an RAII object (PngDecoder, JpegDecoder) in their caller, which frees it on every
// path.
#include <csetjmp>
#include <cstdint>
#include <cstdio>
// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>
#include <png.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <vector>

#include <plugpool/sdk.h>

#include "imagefeatures.capnp.h"

namespace imagefeatures {

// A file that is not a decodable PNG or JPEG image; what() names the path and the reason.
class ImageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace imagefeatures

namespace {

using imagefeatures::ImageError;

// The largest decoded image (width * height * channels bytes) the tasks accept. Larger images
// are refused before any pixel memory is allocated: a few bytes of header can declare a
// four-billion-pixel image. 512 MiB holds e.g. a 12 000 x 12 000 RGBA image.
constexpr std::uint64_t MAX_PIXEL_BYTES = std::uint64_t{512} << 20;
constexpr unsigned HISTOGRAM_BINS = imagefeatures::HISTOGRAM_BINS;
static_assert(256 % HISTOGRAM_BINS == 0);
constexpr unsigned BIN_WIDTH = 256 / HISTOGRAM_BINS;

// Decoded 8-bit samples, row after row, `channels` interleaved samples per pixel.
struct Pixels {
  std::uint32_t width = 0;
  std::uint32_t height = 0;
  unsigned channels = 0;
  const char* format = "";
  std::vector<std::uint8_t> samples;
};

const char* colorSpaceName(unsigned channels) {
  switch (channels) {
    case 1:
      return "gray";
    case 2:
      return "gray+alpha";
    case 3:
      return "rgb";
    default:
      return "rgba";
  }
}

// An open file, closed on destruction.
class File {
 public:
  // Throws std::system_error ("cannot open PATH: ...") if the file cannot be opened.
  explicit File(const std::string& path) : file_(std::fopen(path.c_str(), "rb")) {
    if (file_ == nullptr) {
      int error = errno;
      throw std::system_error(error, std::generic_category(), "cannot open " + path);
    }
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() { std::fclose(file_); }
  std::FILE* get() const { return file_; }

 private:
  std::FILE* file_;
};

enum class Format { PNG, JPEG };

// Tells the format from the first bytes and rewinds. Throws std::system_error if the file
// cannot be read (e.g. a directory), ImageError if it is neither PNG nor JPEG.
Format sniff(std::FILE* file, const std::string& path) {
  std::array<unsigned char, 8> head{};
  std::size_t got = std::fread(head.data(), 1, head.size(), file);
  if (got < head.size() && std::ferror(file)) {
    int error = errno;
    throw std::system_error(error, std::generic_category(), "cannot read " + path);
  }
  std::rewind(file);
  if (got >= 8 && png_sig_cmp(head.data(), 0, 8) == 0) return Format::PNG;
  if (got >= 3 && head[0] == 0xFF && head[1] == 0xD8 && head[2] == 0xFF) return Format::JPEG;
  throw ImageError(path + ": not a PNG or JPEG file" + (got == 0 ? " (it is empty)" : ""));
}

void checkSize(std::uint64_t width, std::uint64_t height, unsigned channels,
               const std::string& path) {
  if (width * height * channels > MAX_PIXEL_BYTES) {
    throw ImageError(path + ": image too large (" + std::to_string(width) + " x " +
                     std::to_string(height) + " x " + std::to_string(channels) +
                     " bytes decoded; the limit is " + std::to_string(MAX_PIXEL_BYTES) + ")");
  }
}

// ---- PNG (libpng) -----------------------------------------------------------------------

// Owns libpng's read state; `message` holds libpng's error after a failed call.
struct PngDecoder {
  png_structp png = nullptr;
  png_infop info = nullptr;
  char message[256] = "";

  PngDecoder();
  PngDecoder(const PngDecoder&) = delete;
  PngDecoder& operator=(const PngDecoder&) = delete;
  ~PngDecoder() { png_destroy_read_struct(&png, info != nullptr ? &info : nullptr, nullptr); }
};

// libpng's error callback: keeps the message and jumps back to the active setjmp.
[[noreturn]] void pngError(png_structp png, png_const_charp message) {
  auto* decoder = static_cast<PngDecoder*>(png_get_error_ptr(png));
  std::snprintf(decoder->message, sizeof decoder->message, "%s", message);
  png_longjmp(png, 1);
}

// Warnings (e.g. a bad CRC in an ancillary chunk) do not make an image unusable; they are
// dropped instead of being printed on the worker's stderr.
void pngWarning(png_structp, png_const_charp) {}

PngDecoder::PngDecoder() {
  png = png_create_read_struct(PNG_LIBPNG_VER_STRING, this, pngError, pngWarning);
  if (png == nullptr) throw std::bad_alloc();
  info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);  // the destructor will not run
    throw std::bad_alloc();
  }
}

struct PngShape {
  std::uint32_t width = 0;
  std::uint32_t height = 0;
  unsigned channels = 0;
  std::size_t rowBytes = 0;
};

// Reads the header and sets up 8-bit output: palette to RGB(A), gray below 8 bits to 8 bits,
// transparency chunks to an alpha channel, 16-bit samples scaled to 8 bits, interlacing
// undone. Returns false if libpng failed (decoder->message says why).
bool pngHeader(PngDecoder* decoder, std::FILE* file, PngShape* shape) {
  if (setjmp(png_jmpbuf(decoder->png))) return false;
  png_init_io(decoder->png, file);
  png_read_info(decoder->png, decoder->info);
  png_set_expand(decoder->png);
  png_set_scale_16(decoder->png);
  png_set_interlace_handling(decoder->png);
  png_read_update_info(decoder->png, decoder->info);
  shape->width = png_get_image_width(decoder->png, decoder->info);
  shape->height = png_get_image_height(decoder->png, decoder->info);
  shape->channels = png_get_channels(decoder->png, decoder->info);
  shape->rowBytes = png_get_rowbytes(decoder->png, decoder->info);
  return true;
}

// Reads every row (rows[i] must hold rowBytes) and the chunks after the image data, so a
// file cut anywhere before its end fails. Returns false if libpng failed.
bool pngRows(PngDecoder* decoder, png_bytep* rows) {
  if (setjmp(png_jmpbuf(decoder->png))) return false;
  png_read_image(decoder->png, rows);
  png_read_end(decoder->png, nullptr);
  return true;
}

// Throws the ImageError for a failed libpng call: "truncated" if reading hit the end of the
// file, else "invalid", with libpng's message.
[[noreturn]] void pngFailed(const PngDecoder& decoder, std::FILE* file, const std::string& path) {
  throw ImageError(path +
                   (std::feof(file) ? ": truncated PNG, the file ends early" : ": invalid PNG") +
                   " (libpng: " + decoder.message + ")");
}

PngShape pngShape(std::FILE* file, PngDecoder& decoder, const std::string& path) {
  PngShape shape;
  if (!pngHeader(&decoder, file, &shape)) pngFailed(decoder, file, path);
  return shape;
}

Pixels decodePng(std::FILE* file, const std::string& path) {
  PngDecoder decoder;
  PngShape shape = pngShape(file, decoder, path);
  checkSize(shape.width, shape.height, shape.channels, path);
  Pixels pixels{shape.width, shape.height, shape.channels, "png", {}};
  pixels.samples.resize(shape.rowBytes * shape.height);
  std::vector<png_bytep> rows(shape.height);
  for (std::size_t y = 0; y < rows.size(); ++y)
    rows[y] = pixels.samples.data() + y * shape.rowBytes;
  if (!pngRows(&decoder, rows.data())) pngFailed(decoder, file, path);
  return pixels;
}

// ---- JPEG (libjpeg-turbo) ----------------------------------------------------------------

// libjpeg's error manager with the jump target and the last message; `manager` comes first
// so that the j_common_ptr's err pointer converts back to JpegErrors.
struct JpegErrors {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void jpegErrorExit(j_common_ptr info) {
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  (*info->err->format_message)(info, errors->message);
  std::longjmp(errors->jump, 1);
}

// Level -1 is a warning (corrupt data, premature end of file): an error here. Levels 0 and
// up are informational and trace messages: ignored instead of printed on stderr.
void jpegEmitMessage(j_common_ptr info, int level) {
  if (level < 0) jpegErrorExit(info);
}

// Owns libjpeg's decompression state. `info` is zero-initialized, so destroying it is safe
// whether or not jpeg_create_decompress ran or finished.
struct JpegDecoder {
  jpeg_decompress_struct info{};
  JpegErrors errors{};

  JpegDecoder() {
    info.err = jpeg_std_error(&errors.manager);
    errors.manager.error_exit = jpegErrorExit;
    errors.manager.emit_message = jpegEmitMessage;
  }
  JpegDecoder(const JpegDecoder&) = delete;
  JpegDecoder& operator=(const JpegDecoder&) = delete;
  ~JpegDecoder() { jpeg_destroy_decompress(&info); }
};

// Creates the decompressor and reads the header. Returns false if libjpeg failed.
bool jpegHeader(JpegDecoder* decoder, std::FILE* file) {
  if (setjmp(decoder->errors.jump)) return false;
  jpeg_create_decompress(&decoder->info);
  jpeg_stdio_src(&decoder->info, file);
  jpeg_read_header(&decoder->info, TRUE);
  return true;
}

bool jpegStart(JpegDecoder* decoder) {
  if (setjmp(decoder->errors.jump)) return false;
  jpeg_start_decompress(&decoder->info);
  return true;
}

// Reads every scanline into `samples` (rowBytes apart) and finishes. Returns false if
// libjpeg failed.
bool jpegRows(JpegDecoder* decoder, std::uint8_t* samples, std::size_t rowBytes) {
  if (setjmp(decoder->errors.jump)) return false;
  while (decoder->info.output_scanline < decoder->info.output_height) {
    JSAMPROW row = samples + std::size_t{decoder->info.output_scanline} * rowBytes;
    jpeg_read_scanlines(&decoder->info, &row, 1);
  }
  jpeg_finish_decompress(&decoder->info);
  return true;
}

// As pngFailed, for libjpeg.
[[noreturn]] void jpegFailed(const JpegDecoder& decoder, std::FILE* file, const std::string& path) {
  throw ImageError(path +
                   (std::feof(file) ? ": truncated JPEG, the file ends early" : ": invalid JPEG") +
                   " (libjpeg: " + decoder.errors.message + ")");
}

// Reads the header; throws ImageError for a broken header or a colour space other than
// grayscale or YCbCr/RGB, and sets up 8-bit gray or RGB output.
void jpegOpen(std::FILE* file, JpegDecoder& decoder, const std::string& path) {
  if (!jpegHeader(&decoder, file)) jpegFailed(decoder, file, path);
  switch (decoder.info.jpeg_color_space) {
    case JCS_GRAYSCALE:
      decoder.info.out_color_space = JCS_GRAYSCALE;
      break;
    case JCS_YCbCr:
    case JCS_RGB:
      decoder.info.out_color_space = JCS_RGB;
      break;
    default:
      throw ImageError(path + ": unsupported JPEG colour space (CMYK or YCCK)");
  }
}

Pixels decodeJpeg(std::FILE* file, const std::string& path) {
  JpegDecoder decoder;
  jpegOpen(file, decoder, path);
  checkSize(decoder.info.image_width, decoder.info.image_height,
            static_cast<unsigned>(decoder.info.num_components), path);
  if (!jpegStart(&decoder)) jpegFailed(decoder, file, path);
  Pixels pixels{decoder.info.output_width,
                decoder.info.output_height,
                static_cast<unsigned>(decoder.info.output_components),
                "jpeg",
                {}};
  std::size_t rowBytes = std::size_t{pixels.width} * pixels.channels;
  pixels.samples.resize(rowBytes * pixels.height);
  if (!jpegRows(&decoder, pixels.samples.data(), rowBytes)) jpegFailed(decoder, file, path);
  return pixels;
}

// ---- Tasks ---------------------------------------------------------------------------------

// How many times each value occurs in each channel. The sums, sums of squares and histogram
// follow from these exactly, and counting costs one increment a sample. An image has at most
// MAX_PIXEL_BYTES samples, so a 32-bit count cannot overflow.
using SampleCounts = std::array<std::array<std::uint32_t, 256>, 4>;
static_assert(MAX_PIXEL_BYTES < (std::uint64_t{1} << 32));

// Two tables, for even and odd pixels, so that runs of equal pixels (flat areas, common in
// images) do not make every increment wait for the one before it.
template <unsigned Channels>
SampleCounts countSamplesOf(const std::vector<std::uint8_t>& samples) {
  std::array<std::array<std::array<std::uint32_t, 256>, Channels>, 2> tables{};
  const std::uint8_t* s = samples.data();
  const std::size_t pixels = samples.size() / Channels;
  std::size_t i = 0;
  for (; i + 2 <= pixels; i += 2, s += 2 * Channels) {
    for (unsigned c = 0; c < Channels; ++c) {
      ++tables[0][c][s[c]];
      ++tables[1][c][s[Channels + c]];
    }
  }
  if (i < pixels) {
    for (unsigned c = 0; c < Channels; ++c) ++tables[0][c][s[c]];
  }
  SampleCounts counts{};
  for (unsigned c = 0; c < Channels; ++c) {
    for (unsigned v = 0; v < 256; ++v) counts[c][v] = tables[0][c][v] + tables[1][c][v];
  }
  return counts;
}

SampleCounts countSamples(const std::vector<std::uint8_t>& samples, unsigned channels) {
  switch (channels) {
    case 1:
      return countSamplesOf<1>(samples);
    case 2:
      return countSamplesOf<2>(samples);
    case 3:
      return countSamplesOf<3>(samples);
    default:
      return countSamplesOf<4>(samples);
  }
}

void features(std::string_view pathView, imagefeatures::ImageFeatures::Builder out) {
  std::string path(pathView);
  File file(path);
  Pixels pixels = sniff(file.get(), path) == Format::PNG ? decodePng(file.get(), path)
                                                         : decodeJpeg(file.get(), path);
  const unsigned channels = pixels.channels;
  const SampleCounts counts = countSamples(pixels.samples, channels);
  std::array<std::uint64_t, 4> sum{}, sumSquares{};
  std::array<std::uint64_t, 4 * HISTOGRAM_BINS> histogram{};
  for (unsigned c = 0; c < channels; ++c) {
    for (std::uint64_t v = 0; v < 256; ++v) {
      const std::uint64_t k = counts[c][v];
      sum[c] += k * v;
      sumSquares[c] += k * v * v;
      histogram[c * HISTOGRAM_BINS + v / BIN_WIDTH] += k;
    }
  }

  const long double n = static_cast<long double>(pixels.width) * pixels.height;
  out.setPath(path);
  out.setFormat(pixels.format);
  out.setWidth(pixels.width);
  out.setHeight(pixels.height);
  out.setChannels(static_cast<std::uint8_t>(channels));
  out.setColorSpace(colorSpaceName(channels));
  auto mean = out.initMean(channels);
  auto stddev = out.initStddev(channels);
  for (unsigned c = 0; c < channels; ++c) {
    long double m = sum[c] / n;
    long double variance = sumSquares[c] / n - m * m;
    mean.set(c, static_cast<double>(m));
    stddev.set(c, static_cast<double>(std::sqrt(variance > 0 ? variance : 0)));
  }
  auto bins = out.initHistogram(channels * HISTOGRAM_BINS);
  for (unsigned i = 0; i < channels * HISTOGRAM_BINS; ++i) bins.set(i, histogram[i]);
  out.setBrightness(channels >= 3 ? 0.299 * mean[0] + 0.587 * mean[1] + 0.114 * mean[2] : mean[0]);
}

std::tuple<std::uint32_t, std::uint32_t> imageSize(std::string_view pathView) {
  std::string path(pathView);
  File file(path);
  if (sniff(file.get(), path) == Format::PNG) {
    PngDecoder decoder;
    PngShape shape = pngShape(file.get(), decoder, path);
    return {shape.width, shape.height};
  }
  JpegDecoder decoder;
  jpegOpen(file.get(), decoder, path);
  return {decoder.info.image_width, decoder.info.image_height};
}

}  // namespace

PLUGPOOL_PLUGIN("imagefeatures",
                PLUGPOOL_TASK(features,
                              "Decodes a PNG or JPEG file (given by path) and returns its size, "
                              "per-channel mean and standard deviation, an 8-bin-per-channel "
                              "histogram and its mean brightness."),
                PLUGPOOL_TASK_AS("size", imageSize,
                                 "Width and height of a PNG or JPEG file (given by path), from "
                                 "its header only."));
