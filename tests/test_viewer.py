"""The browser viewer, loaded in headless Chromium: a stream appears and the 3D canvas is not blank."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

from voxlink import camera
from voxlink.models import ImplicitModel, get_config
from voxlink.models.binarizer import pack_bits
from voxlink.protocol import CodeMessage, StreamInfo, encode_code, encode_info, fingerprint32
from voxlink.weights import save_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not installed "
                                                      "(scripts/setup.sh installs them)")
def test_viewer_shows_stream_and_draws_3d(tmp_path):
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from ground.station import GroundConfig, GroundStation
    from ground.viewer import ViewerServer

    torch.manual_seed(0)
    m = ImplicitModel(get_config("tiny")).eval()
    with torch.no_grad():  # a recognisable blob for the viewer to draw
        m.decoder.voxel_bias[0, 1] = -8.0
        m.decoder.voxel_bias[0, 1, 8:24, 4:28, 8:24] = 8.0
    path = save_model(m, tmp_path / "tiny.safetensors")
    st = GroundStation(GroundConfig(bind=[], model=str(path), out=str(tmp_path / "out")))
    server = ViewerServer(st, "127.0.0.1", 0).start()
    st.handle(encode_info(StreamInfo(stream=4, seq=0, fingerprint=bytes.hex(st.fp), code_bits=64,
                                     K=camera.intrinsics(), model="tiny", epoch_unix=time.time())))
    for i in range(3):
        code = st.model.encode(torch.rand(1, 3, 128, 128))[0]
        st.handle(encode_code(CodeMessage(stream=4, object_id=1, seq=i, t_ms=i, fingerprint=fingerprint32(st.fp),
                                          n_bits=64, payload=pack_bits(code),
                                          pose=camera.orbit_poses(1, np.random.default_rng(i))[0])))
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", "--window-size=1000,700"):
        opts.add_argument(a)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chrome'}")
    opts.page_load_strategy = "eager"
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(120)
    try:
        driver.get(f"http://127.0.0.1:{server.port}/")
        deadline = time.time() + 30
        while time.time() < deadline and driver.find_element("tag name", "body").get_attribute("data-streams") != "1":
            time.sleep(0.5)
        assert driver.find_element("tag name", "body").get_attribute("data-streams") == "1", "no stream on the page"
        assert "4" in driver.find_element("id", "streams").text
        time.sleep(2)  # let a few frames render
        png = driver.find_element("tag name", "canvas").screenshot_as_png
        (tmp_path / "viewer.png").write_bytes(png)
    finally:
        driver.quit()
        server.close()
    from io import BytesIO

    from PIL import Image

    img = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
    background = np.array([0x15, 0x18, 0x1D])
    blue = (np.abs(img - [0x5A, 0x96, 0xDC]).sum(-1) < 120) | ((img[..., 2] > 120) & (img[..., 2] > img[..., 0] + 40))
    assert (np.abs(img - background).sum(-1) > 30).mean() > 0.01, "the 3D canvas is blank"
    assert blue.mean() > 0.005, "no voxels drawn"
