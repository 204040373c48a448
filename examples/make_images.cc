// make_images — writes a folder of synthetic PNG and JPEG test images, deterministically: the
// same arguments always write the same bytes (image i depends only on i).
//
//   $ build/examples/make_images DIR COUNT [BROKEN]
//   wrote 3000 images (2135 PNG, 865 JPEG) and 0 broken files to DIR
//
// Image i is img<i>.png or img<i>.jpg (i zero-padded to 5 digits), 16 to 640 pixels on each
// side, one of seven kinds: PNG gray, gray 16-bit, RGB, RGBA, palette; JPEG RGB, gray. Its
// content is a gradient, a checkerboard or noise in random colours. BROKEN more files,
// broken<j>.*, cycle through four ways a file can fail to decode: a PNG cut in half, a JPEG
// cut in half, a text file named .png and an empty .jpg. DIR is created if missing; files of
// the same name are overwritten.
//
// Not a pool host: a tool for the image_features example and the imagefeatures plugin's
// tests. It writes with the same libraries the plugin reads with (libpng's simplified API,
// libjpeg-turbo), so python3 without PIL is not needed.
#include <cstdint>
#include <cstdio>
// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>
#include <png.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

enum class Kind { PNG_GRAY, PNG_GRAY16, PNG_RGB, PNG_RGBA, PNG_PALETTE, JPEG_RGB, JPEG_GRAY };
constexpr int KINDS = 7;

struct Image {
  unsigned width = 0;
  unsigned height = 0;
  unsigned channels = 0;
  std::vector<std::uint8_t> samples;  // row after row, channels interleaved
};

// A uniform integer in [lo, hi] from the generator's raw output (std distributions differ
// between standard libraries; mt19937's raw sequence does not).
unsigned uniform(std::mt19937& rng, unsigned lo, unsigned hi) {
  return lo + static_cast<unsigned>(rng() % (hi - lo + 1));
}

// A gradient, checkerboard or noise pattern between two random colours.
Image paint(std::mt19937& rng, unsigned width, unsigned height, unsigned channels) {
  Image image{width, height, channels, std::vector<std::uint8_t>(width * height * channels)};
  std::array<unsigned, 4> from{}, to{};
  for (unsigned c = 0; c < 4; ++c) {
    from[c] = uniform(rng, 0, 255);
    to[c] = uniform(rng, 0, 255);
  }
  unsigned pattern = uniform(rng, 0, 2);
  unsigned cell = uniform(rng, 2, 32);
  for (unsigned y = 0; y < height; ++y) {
    for (unsigned x = 0; x < width; ++x) {
      unsigned t = 0;  // 0..255: how far from `from` towards `to`
      if (pattern == 0) t = (x + y) * 255 / (width + height - 2);
      if (pattern == 1) t = ((x / cell + y / cell) % 2) * 255;
      if (pattern == 2) t = uniform(rng, 0, 255);
      for (unsigned c = 0; c < channels; ++c) {
        unsigned v = (from[c] * (255 - t) + to[c] * t) / 255;
        image.samples[(y * width + x) * channels + c] = static_cast<std::uint8_t>(v);
      }
    }
  }
  return image;
}

void writeBytes(const fs::path& path, const void* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

// PNG bytes of `image` in `format` (PNG_FORMAT_*); `samples` may be 16-bit for linear formats.
std::vector<std::uint8_t> encodePng(unsigned width, unsigned height, png_uint_32 format,
                                    const void* samples, const void* colormap = nullptr,
                                    unsigned colormapEntries = 0) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = width;
  png.height = height;
  png.format = format;
  png.colormap_entries = colormapEntries;
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&png, nullptr, &size, 0, samples, 0, colormap))
    throw std::runtime_error(std::string("libpng: ") + png.message);
  std::vector<std::uint8_t> bytes(size);
  if (!png_image_write_to_memory(&png, bytes.data(), &size, 0, samples, 0, colormap))
    throw std::runtime_error(std::string("libpng: ") + png.message);
  bytes.resize(size);
  return bytes;
}

// JPEG bytes of an 8-bit gray or RGB image. libjpeg's default error handler reports and
// exits, which is what a tool wants.
std::vector<std::uint8_t> encodeJpeg(const Image& image, int quality) {
  jpeg_compress_struct info{};
  jpeg_error_mgr errors{};
  info.err = jpeg_std_error(&errors);
  jpeg_create_compress(&info);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&info, &buffer, &size);
  info.image_width = image.width;
  info.image_height = image.height;
  info.input_components = static_cast<int>(image.channels);
  info.in_color_space = image.channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, quality, TRUE);
  jpeg_start_compress(&info, TRUE);
  std::size_t rowBytes = std::size_t{image.width} * image.channels;
  while (info.next_scanline < info.image_height) {
    JSAMPROW row = const_cast<std::uint8_t*>(image.samples.data()) + info.next_scanline * rowBytes;
    jpeg_write_scanlines(&info, &row, 1);
  }
  jpeg_finish_compress(&info);
  jpeg_destroy_compress(&info);
  std::vector<std::uint8_t> bytes(buffer, buffer + size);
  std::free(buffer);
  return bytes;
}

std::string numbered(const char* stem, unsigned i, const char* extension) {
  char name[64];
  std::snprintf(name, sizeof name, "%s%05u.%s", stem, i, extension);
  return name;
}

// Writes image i; returns true for a PNG.
bool writeImage(const fs::path& dir, unsigned i) {
  std::mt19937 rng(i);
  auto kind = static_cast<Kind>(uniform(rng, 0, KINDS - 1));
  unsigned width = uniform(rng, 16, 640);
  unsigned height = uniform(rng, 16, 640);
  std::vector<std::uint8_t> bytes;
  switch (kind) {
    case Kind::PNG_GRAY:
      bytes =
          encodePng(width, height, PNG_FORMAT_GRAY, paint(rng, width, height, 1).samples.data());
      break;
    case Kind::PNG_GRAY16: {
      Image image = paint(rng, width, height, 1);
      std::vector<std::uint16_t> wide(image.samples.begin(), image.samples.end());
      for (auto& v : wide) v = static_cast<std::uint16_t>(v * 257);
      bytes = encodePng(width, height, PNG_FORMAT_LINEAR_Y, wide.data());
      break;
    }
    case Kind::PNG_RGB:
      bytes = encodePng(width, height, PNG_FORMAT_RGB, paint(rng, width, height, 3).samples.data());
      break;
    case Kind::PNG_RGBA:
      bytes =
          encodePng(width, height, PNG_FORMAT_RGBA, paint(rng, width, height, 4).samples.data());
      break;
    case Kind::PNG_PALETTE: {
      // 16 random colours; each pixel's index from a gray pattern.
      std::vector<std::uint8_t> colormap(16 * 3);
      for (auto& v : colormap) v = static_cast<std::uint8_t>(uniform(rng, 0, 255));
      Image indices = paint(rng, width, height, 1);
      for (auto& v : indices.samples) v = static_cast<std::uint8_t>(v / 16);
      bytes = encodePng(width, height, PNG_FORMAT_RGB_COLORMAP, indices.samples.data(),
                        colormap.data(), 16);
      break;
    }
    case Kind::JPEG_RGB:
      bytes = encodeJpeg(paint(rng, width, height, 3), static_cast<int>(uniform(rng, 50, 95)));
      break;
    case Kind::JPEG_GRAY:
      bytes = encodeJpeg(paint(rng, width, height, 1), static_cast<int>(uniform(rng, 50, 95)));
      break;
  }
  bool png = kind != Kind::JPEG_RGB && kind != Kind::JPEG_GRAY;
  fs::path path = dir / numbered("img", i, png ? "png" : "jpg");
  writeBytes(path, bytes.data(), bytes.size());
  return png;
}

void writeBroken(const fs::path& dir, unsigned j) {
  std::mt19937 rng(1'000'000 + j);
  switch (j % 4) {
    case 0: {
      Image image = paint(rng, 64, 64, 3);
      auto bytes = encodePng(64, 64, PNG_FORMAT_RGB, image.samples.data());
      writeBytes(dir / numbered("broken", j, "png"), bytes.data(), bytes.size() / 2);
      break;
    }
    case 1: {
      auto bytes = encodeJpeg(paint(rng, 64, 64, 3), 90);
      writeBytes(dir / numbered("broken", j, "jpg"), bytes.data(), bytes.size() / 2);
      break;
    }
    case 2: {
      std::string text = "this is not an image\n";
      writeBytes(dir / numbered("broken", j, "png"), text.data(), text.size());
      break;
    }
    default:
      writeBytes(dir / numbered("broken", j, "jpg"), "", 0);
      break;
  }
}

unsigned parseCount(const char* text) {
  char* end = nullptr;
  unsigned long value = std::strtoul(text, &end, 10);
  if (*text == '\0' || *end != '\0' || value > 1'000'000)
    throw std::invalid_argument(std::string("not a count (0..1000000): ") + text);
  return static_cast<unsigned>(value);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::cerr << "usage: make_images DIR COUNT [BROKEN]\n";
    return 2;
  }
  try {
    fs::path dir = argv[1];
    unsigned count = parseCount(argv[2]);
    unsigned broken = argc == 4 ? parseCount(argv[3]) : 0;
    fs::create_directories(dir);
    unsigned pngs = 0;
    for (unsigned i = 0; i < count; ++i) pngs += writeImage(dir, i) ? 1 : 0;
    for (unsigned j = 0; j < broken; ++j) writeBroken(dir, j);
    std::cout << "wrote " << count << " images (" << pngs << " PNG, " << count - pngs
              << " JPEG) and " << broken << " broken files to " << dir.string() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "make_images: " << e.what() << "\n";
    return 1;
  }
}
