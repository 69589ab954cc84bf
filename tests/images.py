"""Builders for test images: valid synthetic slices and the broken files real uploads contain."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_model.synthetic import synthetic_slice


def jpeg_bytes(label: str = "glioma", index: int = 0, size: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_slice(label=label, index=index, size=size)).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def dicom_bytes(array: np.ndarray, *, patient_name: str = "Doe^Jane") -> bytes:
    """A DICOM Part 10 file (MR, 16-bit MONOCHROME2) holding `array` and a patient name that must never leak."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "MR"
    dataset.PatientName = patient_name
    dataset.PatientID = "TUMOROPS-TEST-0001"
    dataset.Rows, dataset.Columns = array.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.PixelData = array.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
