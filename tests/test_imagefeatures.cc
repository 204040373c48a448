// The imagefeatures plugin in real workers: exact statistics for small images written here
// with libpng and libjpeg, and every kind of bad file failing its own item with a clear
// message while the worker that decoded it lives on.
#include <png.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <tuple>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "imagefeatures.capnp.h"
#include "support.h"

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;
using Features = imagefeatures::ImageFeatures;
using plugpool::Pool;

namespace {

// A fresh temporary folder, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "plugpool-imagefeatures-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// Writes a PNG with libpng's full API: `samples` are the rows' bytes as PNG stores them
// (packed below 8 bits, big-endian at 16). libpng aborts on an error here (no setjmp), which
// fails the test loudly.
void writePng(const std::string& path, unsigned width, unsigned height, int colorType, int bitDepth,
              const Bytes& samples, int interlace = PNG_INTERLACE_NONE,
              const std::vector<png_color>& palette = {}, const Bytes& transparency = {}) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  REQUIRE(file != nullptr);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_init_io(png, file);
  png_set_IHDR(png, info, width, height, bitDepth, colorType, interlace,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (!palette.empty()) png_set_PLTE(png, info, palette.data(), static_cast<int>(palette.size()));
  if (!transparency.empty())
    png_set_tRNS(png, info, transparency.data(), static_cast<int>(transparency.size()), nullptr);
  png_write_info(png, info);
  std::size_t rowBytes = png_get_rowbytes(png, info);
  REQUIRE(samples.size() == rowBytes * height);
  std::vector<png_bytep> rows(height);
  for (unsigned y = 0; y < height; ++y)
    rows[y] = const_cast<png_bytep>(samples.data()) + y * rowBytes;
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(file);
}

// Writes a JPEG of 1 (gray), 3 (RGB) or 4 (CMYK) channels at quality 95.
void writeJpeg(const std::string& path, unsigned width, unsigned height, unsigned channels,
               const Bytes& samples) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  REQUIRE(file != nullptr);
  jpeg_compress_struct info{};
  jpeg_error_mgr errors{};
  info.err = jpeg_std_error(&errors);
  jpeg_create_compress(&info);
  jpeg_stdio_dest(&info, file);
  info.image_width = width;
  info.image_height = height;
  info.input_components = static_cast<int>(channels);
  info.in_color_space = channels == 1 ? JCS_GRAYSCALE : channels == 3 ? JCS_RGB : JCS_CMYK;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, 95, TRUE);
  jpeg_start_compress(&info, TRUE);
  while (info.next_scanline < height) {
    JSAMPROW row = const_cast<JSAMPROW>(samples.data()) + info.next_scanline * width * channels;
    jpeg_write_scanlines(&info, &row, 1);
  }
  jpeg_finish_compress(&info);
  jpeg_destroy_compress(&info);
  std::fclose(file);
}

Bytes readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void writeFile(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

// `pixels` copies of one pixel's samples.
Bytes solid(std::size_t pixels, const Bytes& pixel) {
  Bytes samples;
  for (std::size_t i = 0; i < pixels; ++i)
    samples.insert(samples.end(), pixel.begin(), pixel.end());
  return samples;
}

template <typename T>
std::vector<T> listOf(typename capnp::List<T>::Reader list) {
  std::vector<T> values;
  for (T v : list) values.push_back(v);
  return values;
}
std::vector<double> listOf(capnp::List<double>::Reader list) {
  return listOf<double>(list);
}
std::vector<std::uint64_t> listOf(capnp::List<std::uint64_t>::Reader list) {
  return listOf<std::uint64_t>(list);
}

// 8 histogram bins with `count` in bin `bin` and zero elsewhere.
std::vector<std::uint64_t> oneBin(unsigned bin, std::uint64_t count) {
  std::vector<std::uint64_t> bins(8, 0);
  bins[bin] = count;
  return bins;
}

std::vector<std::uint64_t> concat(std::initializer_list<std::vector<std::uint64_t>> parts) {
  std::vector<std::uint64_t> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

// The TaskError that running `call` throws.
template <typename F>
plugpool::TaskError taskErrorOf(F&& call) {
  try {
    call();
  } catch (const plugpool::TaskError& e) {
    return e;
  }
  FAIL("no TaskError was thrown");
  throw;
}

}  // namespace

TEST_CASE("features gives exact statistics for PNGs of every colour type and bit depth") {
  TempDir dir;
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"imagefeatures"});
    auto features = pool.task<Features(std::string)>("imagefeatures", "features");

    SECTION("8-bit gray, half black and half white") {
      Bytes samples;
      for (int y = 0; y < 4; ++y) samples.insert(samples.end(), {0, 0, 0, 0, 255, 255, 255, 255});
      writePng(dir / "gray.png", 8, 4, PNG_COLOR_TYPE_GRAY, 8, samples);
      auto f = pool.apply(features, dir / "gray.png");
      CHECK(f.get().getPath() == dir / "gray.png");
      CHECK(f.get().getFormat() == "png");
      CHECK(f.get().getWidth() == 8);
      CHECK(f.get().getHeight() == 4);
      CHECK(f.get().getChannels() == 1);
      CHECK(f.get().getColorSpace() == "gray");
      CHECK(listOf(f.get().getMean()) == std::vector<double>{127.5});
      CHECK(listOf(f.get().getStddev()) == std::vector<double>{127.5});
      CHECK(listOf(f.get().getHistogram()) == std::vector<std::uint64_t>{16, 0, 0, 0, 0, 0, 0, 16});
      CHECK(f.get().getBrightness() == 127.5);
    }
    SECTION("RGB of one colour: Rec. 601 brightness, no spread") {
      writePng(dir / "rgb.png", 3, 2, PNG_COLOR_TYPE_RGB, 8, solid(6, {10, 200, 40}));
      auto f = pool.apply(features, dir / "rgb.png");
      CHECK(f.get().getChannels() == 3);
      CHECK(f.get().getColorSpace() == "rgb");
      CHECK(listOf(f.get().getMean()) == std::vector<double>{10, 200, 40});
      CHECK(listOf(f.get().getStddev()) == std::vector<double>{0, 0, 0});
      CHECK(listOf(f.get().getHistogram()) == concat({oneBin(0, 6), oneBin(6, 6), oneBin(1, 6)}));
      CHECK(f.get().getBrightness() == Approx(0.299 * 10 + 0.587 * 200 + 0.114 * 40));
    }
    SECTION("RGBA: alpha is a fourth channel, not part of brightness") {
      writePng(dir / "rgba.png", 2, 1, PNG_COLOR_TYPE_RGBA, 8, {0, 0, 0, 0, 255, 255, 255, 255});
      auto f = pool.apply(features, dir / "rgba.png");
      CHECK(f.get().getColorSpace() == "rgba");
      CHECK(listOf(f.get().getMean()) == std::vector<double>{127.5, 127.5, 127.5, 127.5});
      CHECK(listOf(f.get().getStddev()) == std::vector<double>{127.5, 127.5, 127.5, 127.5});
      CHECK(f.get().getBrightness() == Approx(127.5));
    }
    SECTION("a palette with a transparent entry expands to RGBA") {
      std::vector<png_color> palette = {{255, 0, 0}, {0, 0, 255}};
      writePng(dir / "palette.png", 4, 1, PNG_COLOR_TYPE_PALETTE, 8, {0, 1, 1, 1},
               PNG_INTERLACE_NONE, palette, {0});
      auto f = pool.apply(features, dir / "palette.png");
      CHECK(f.get().getChannels() == 4);
      CHECK(listOf(f.get().getMean()) == std::vector<double>{63.75, 0, 191.25, 191.25});
      CHECK(listOf(f.get().getHistogram()) == concat({{3, 0, 0, 0, 0, 0, 0, 1},
                                                      oneBin(0, 4),
                                                      {1, 0, 0, 0, 0, 0, 0, 3},
                                                      {1, 0, 0, 0, 0, 0, 0, 3}}));
    }
    SECTION("1-bit gray scales to 0 and 255") {
      writePng(dir / "bits.png", 8, 1, PNG_COLOR_TYPE_GRAY, 1, {0x55});
      auto f = pool.apply(features, dir / "bits.png");
      CHECK(f.get().getChannels() == 1);
      CHECK(listOf(f.get().getHistogram()) == std::vector<std::uint64_t>{4, 0, 0, 0, 0, 0, 0, 4});
    }
    SECTION("16-bit gray scales to 8 bits") {
      writePng(dir / "wide.png", 2, 1, PNG_COLOR_TYPE_GRAY, 16, {0x00, 0x00, 0xFF, 0xFF});
      auto f = pool.apply(features, dir / "wide.png");
      CHECK(listOf(f.get().getMean()) == std::vector<double>{127.5});
      CHECK(listOf(f.get().getHistogram()) == std::vector<std::uint64_t>{1, 0, 0, 0, 0, 0, 0, 1});
    }
    SECTION("interlaced and plain PNGs of the same pixels give the same features") {
      Bytes samples;  // every value 0..255 once: x * 16 + y
      for (unsigned y = 0; y < 16; ++y)
        for (unsigned x = 0; x < 16; ++x) samples.push_back(static_cast<std::uint8_t>(x * 16 + y));
      writePng(dir / "plain.png", 16, 16, PNG_COLOR_TYPE_GRAY, 8, samples);
      writePng(dir / "adam7.png", 16, 16, PNG_COLOR_TYPE_GRAY, 8, samples, PNG_INTERLACE_ADAM7);
      for (const char* name : {"plain.png", "adam7.png"}) {
        INFO(name);
        auto f = pool.apply(features, dir / name);
        CHECK(listOf(f.get().getMean()) == std::vector<double>{127.5});
        CHECK(f.get().getStddev()[0] == Approx(std::sqrt((256.0 * 256.0 - 1) / 12)));
        CHECK(listOf(f.get().getHistogram()) == std::vector<std::uint64_t>(8, 32));
      }
      CHECK(readFile(dir / "plain.png") != readFile(dir / "adam7.png"));
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("features of JPEGs: RGB and gray, statistics within compression error") {
  TempDir dir;
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"imagefeatures"});
    auto features = pool.task<Features(std::string)>("imagefeatures", "features");
    writeJpeg(dir / "rgb.jpg", 16, 16, 3, solid(256, {10, 200, 40}));
    auto rgb = pool.apply(features, dir / "rgb.jpg");
    CHECK(rgb.get().getFormat() == "jpeg");
    CHECK(rgb.get().getWidth() == 16);
    CHECK(rgb.get().getChannels() == 3);
    CHECK(rgb.get().getColorSpace() == "rgb");
    std::vector<double> expected = {10, 200, 40};
    for (unsigned c = 0; c < 3; ++c) {
      CHECK(std::abs(rgb.get().getMean()[c] - expected[c]) <= 3);
      CHECK(rgb.get().getStddev()[c] <= 2);
    }
    CHECK(std::abs(rgb.get().getBrightness() - (0.299 * 10 + 0.587 * 200 + 0.114 * 40)) <= 3);

    writeJpeg(dir / "gray.jpg", 16, 8, 1, solid(128, {100}));
    auto gray = pool.apply(features, dir / "gray.jpg");
    CHECK(gray.get().getHeight() == 8);
    CHECK(gray.get().getChannels() == 1);
    CHECK(gray.get().getColorSpace() == "gray");
    CHECK(std::abs(gray.get().getMean()[0] - 100) <= 1);
    CHECK(listOf(gray.get().getHistogram()) == concat({oneBin(3, 128)}));
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("size reads width and height from the header") {
  TempDir dir;
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"imagefeatures"});
    auto size =
        pool.task<std::tuple<std::uint32_t, std::uint32_t>(std::string)>("imagefeatures", "size");
    writePng(dir / "a.png", 300, 7, PNG_COLOR_TYPE_GRAY, 8, Bytes(300 * 7, 9));
    writeJpeg(dir / "b.jpg", 17, 33, 3, Bytes(17 * 33 * 3, 9));
    CHECK(pool.apply(size, dir / "a.png") == std::tuple<std::uint32_t, std::uint32_t>{300, 7});
    CHECK(pool.apply(size, dir / "b.jpg") == std::tuple<std::uint32_t, std::uint32_t>{17, 33});
    auto error = taskErrorOf([&] { pool.apply(size, dir / "missing.png"); });
    CHECK(error.remoteType() == "std::system_error");
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a bad file fails its own item with a clear message and never crashes the worker") {
  TempDir dir;
  // Good files to break in different ways.
  Bytes samples;
  for (unsigned i = 0; i < 64 * 64 * 3; ++i) samples.push_back(static_cast<std::uint8_t>(i * 7));
  writePng(dir / "good.png", 64, 64, PNG_COLOR_TYPE_RGB, 8, samples);
  writeJpeg(dir / "good.jpg", 64, 64, 3, samples);
  Bytes png = readFile(dir / "good.png");
  Bytes jpeg = readFile(dir / "good.jpg");

  writeFile(dir / "text.png", Bytes{'h', 'e', 'l', 'l', 'o', '\n'});
  writeFile(dir / "empty.jpg", {});
  writeFile(dir / "half.png", Bytes(png.begin(), png.begin() + png.size() / 2));
  writeFile(dir / "half.jpg", Bytes(jpeg.begin(), jpeg.begin() + jpeg.size() / 2));
  Bytes corrupt = png;  // a flipped byte in the image data: its chunk's CRC no longer matches
  corrupt[corrupt.size() / 2] ^= 0xFF;
  writeFile(dir / "corrupt.png", corrupt);
  // An IHDR declaring 100 000 x 100 000 RGBA (40 GB once decoded), then an empty IDAT: the
  // header libpng reads before any pixel; valid CRCs.
  Bytes huge = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  auto chunk = [&huge](const char* type, const Bytes& data) {
    for (int shift : {24, 16, 8, 0})
      huge.push_back(static_cast<std::uint8_t>(data.size() >> shift));
    std::size_t start = huge.size();
    huge.insert(huge.end(), type, type + 4);
    huge.insert(huge.end(), data.begin(), data.end());
    auto crc = ::crc32(0, huge.data() + start, static_cast<uInt>(huge.size() - start));
    for (int shift : {24, 16, 8, 0}) huge.push_back(static_cast<std::uint8_t>(crc >> shift));
  };
  chunk("IHDR", {0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0, 8, 6, 0, 0, 0});
  chunk("IDAT", {});
  writeFile(dir / "huge.png", huge);
  writeJpeg(dir / "cmyk.jpg", 8, 8, 4, Bytes(8 * 8 * 4, 50));
  fs::create_directory(dir / "folder.png");

  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"imagefeatures", "examples"});
    auto features = pool.task<Features(std::string)>("imagefeatures", "features");
    auto workerPid = pool.task<std::int64_t()>("examples", "worker_pid");
    std::int64_t pid = pool.apply(workerPid);

    // `message` is the whole message, or its start when it ends with "...".
    struct Case {
      std::string file, type, message;
    };
    std::vector<Case> cases = {
        {"missing.png", "std::system_error",
         "cannot open " + dir / "missing.png" + ": No such file or directory"},
        {"folder.png", "std::system_error",
         "cannot read " + dir / "folder.png" + ": Is a directory"},
        {"text.png", "imagefeatures::ImageError", dir / "text.png" + ": not a PNG or JPEG file"},
        {"empty.jpg", "imagefeatures::ImageError",
         dir / "empty.jpg" + ": not a PNG or JPEG file (it is empty)"},
        {"half.png", "imagefeatures::ImageError",
         dir / "half.png" + ": truncated PNG, the file ends early (libpng: Read Error)"},
        {"half.jpg", "imagefeatures::ImageError",
         dir / "half.jpg" +
             ": truncated JPEG, the file ends early (libjpeg: Premature end of JPEG file)"},
        {"corrupt.png", "imagefeatures::ImageError",
         dir / "corrupt.png" + ": invalid PNG (libpng: IDAT: ..."},
        {"huge.png", "imagefeatures::ImageError",
         dir / "huge.png" + ": image too large (100000 x 100000 x 4 bytes decoded; the limit is " +
             "536870912)"},
        {"cmyk.jpg", "imagefeatures::ImageError",
         dir / "cmyk.jpg" + ": unsupported JPEG colour space (CMYK or YCCK)"},
    };
    for (const auto& c : cases) {
      INFO(c.file);
      auto error = taskErrorOf([&] { pool.apply(features, dir / c.file); });
      CHECK(error.remoteType() == c.type);
      if (c.message.ends_with("...")) {
        CHECK_THAT(error.remoteMessage(),
                   Catch::Matchers::StartsWith(c.message.substr(0, c.message.size() - 3)));
      } else {
        CHECK(error.remoteMessage() == c.message);
      }
      CHECK(error.task() == "features");
      CHECK(error.plugin() == "imagefeatures");
    }

    // One map over good and bad files together: each bad one fails alone, in place.
    std::vector<std::string> paths;
    for (const auto& c : cases) paths.insert(paths.end(), {dir / "good.png", dir / c.file});
    auto stream = pool.imap(features, paths, 1);
    for (std::size_t i = 0; i < paths.size(); ++i) {
      INFO(paths[i]);
      if (i % 2 == 0) {
        CHECK(stream.next()->get().getWidth() == 64);
      } else {
        CHECK_THROWS_AS(stream.next(), plugpool::TaskError);
      }
    }
    CHECK(!stream.next());

    CHECK(pool.apply(features, dir / "good.jpg").get().getHeight() == 64);
    INFO("the same worker decoded every file: no error crashed it");
    CHECK(pool.apply(workerPid) == pid);
  }
  testing::requireCleanShutdown(before);
}
