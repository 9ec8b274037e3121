"""The paper's ImageNet setting: a class-folder tree of JPEGs too large for memory, streamed.

    SOURCE/train/<class>/<image>   the training images (ImageNet: 1.28M in 1,000 classes)
    SOURCE/val/<class>/<image>     the validation images (ImageNet: 50,000), split with a fixed
                                   seed into `val_size` for epoch selection and the rest for test

Images are decoded and cropped with Pillow in worker processes of PyTorch's DataLoader
(`torch.utils.data`), for either trainer and without MXNet: both read `FolderImages` like an
in-memory uint8 array (len, shape, indexing, `batches`). The augmentation is the standard one
(He et al. 2016; torchvision's reference recipe): for training a random resized crop (area 8% to
100% of the image, aspect ratio 3/4 to 4/3, 10 tries, else the centre) to size x size, bicubic,
and a random mirror; for evaluation the shorter side resized to size x 256/224 and the centre
size x size. The random draws come from the caller's numpy Generator, made in the main process
and handed to the workers with each image, so a run is repeatable whatever the number of
workers. Pixels stay 0..255: the network's input BatchNorm normalises them, as the release's does.
"""

import math
import os

import numpy as np

from mbemlib.dataset import IMAGE_SUFFIXES, Dataset

DRAWS = 10  # random-resized-crop attempts, as in the reference recipe


class Decode:
    """A map-style dataset: item k -> (uint8 C x H x W image, k). `draws` (n x (4 * DRAWS + 1))
    holds the uniform numbers for item k's crop attempts and mirror; None means the evaluation
    transform."""

    def __init__(self, files, size, draws=None):
        self.files, self.size, self.draws = files, size, draws

    def __len__(self):
        return len(self.files)

    def __getitem__(self, k):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[k]) as file:
                image = file.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise ValueError(f"{self.files[k]}: not a readable image ({type(err).__name__})") from None
        width, height = image.size
        size = self.size
        if self.draws is None:
            short = round(size * 256 / 224)
            scale = short / min(width, height)
            image = image.resize((max(short, round(width * scale)), max(short, round(height * scale))),
                                 Image.BICUBIC)
            x0, y0 = (image.size[0] - size) // 2, (image.size[1] - size) // 2
            image = image.crop((x0, y0, x0 + size, y0 + size))
        else:
            x0, y0, w, h = crop_box(height, width, self.draws[k])
            image = image.crop((x0, y0, x0 + w, y0 + h)).resize((size, size), Image.BICUBIC)
            if self.draws[k, -1] < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(image).transpose(2, 0, 1), k


def stack(samples):
    """The DataLoader's collate: (uint8 N x C x H x W, item indices), numpy throughout."""
    images, positions = zip(*samples, strict=True)
    return np.stack(images), np.array(positions, dtype=np.int64)


def crop_box(height, width, u, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(x0, y0, w, h) of a random resized crop from uniform numbers u (4 per attempt)."""
    area = height * width
    for t in range(DRAWS):
        a, r, ux, uy = u[4 * t:4 * t + 4]
        target = area * (scale[0] + a * (scale[1] - scale[0]))
        aspect = math.exp(math.log(ratio[0]) + r * (math.log(ratio[1]) - math.log(ratio[0])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(ux * (width - w + 1)), int(uy * (height - h + 1)), w, h
    side = min(height, width)  # no attempt fitted: the centre square
    return (width - side) // 2, (height - side) // 2, side, side


class FolderImages:
    """Image files read like an in-memory uint8 array of shape (n, 3, size, size): len(), .shape,
    indexing by an index array (a subset), and batches() for the trainers (pipeline.batches)."""

    def __init__(self, files, size=224, workers=2):
        self.files, self.size, self.workers = np.asarray(files), size, workers

    def __len__(self):
        return len(self.files)

    @property
    def shape(self):
        return (len(self.files), 3, self.size, self.size)

    def __getitem__(self, index):
        return FolderImages(self.files[index], self.size, self.workers)

    def batches(self, batch_size, rng=None, shuffle=False, train=False, drop_last=False):
        """(float32 images, indices) batches, decoded by `workers` processes; augmented if train."""
        from torch.utils.data import DataLoader

        order = rng.permutation(len(self)) if shuffle else np.arange(len(self))
        draws = rng.random((len(self), 4 * DRAWS + 1)) if train else None
        decode = Decode(self.files[order], self.size, None if draws is None else draws[order])
        loader = DataLoader(decode, batch_size, shuffle=False, num_workers=self.workers, collate_fn=stack,
                            drop_last=drop_last)
        for images, positions in loader:
            yield images.astype(np.float32), order[positions]


def list_folder(folder):
    """(class names, image files, labels) of folder/<class>/<image>, classes and files sorted."""
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    files, labels = [], []
    for label, name in enumerate(classes):
        names = sorted(f for f in os.listdir(os.path.join(folder, name)) if f.lower().endswith(IMAGE_SUFFIXES))
        files += [os.path.join(folder, name, f) for f in names]
        labels += [label] * len(names)
    return classes, files, np.array(labels, dtype=np.int64)


def load(source, val_size=10000, size=224, workers=2, seed=12345):
    """The tree under `source` as a Dataset of FolderImages: training images, the validation
    images split into `val_size` for validation and the rest for test (fixed seed)."""
    lists = {}
    for split in ("train", "val"):
        folder = os.path.join(source, split)
        if not os.path.isdir(folder):
            raise ValueError(f"{source}: expected {split}/<class>/<image> folders (the ImageNet layout)")
        lists[split] = list_folder(folder)
    classes, train_files, train_labels = lists["train"]
    if lists["val"][0] != classes:
        raise ValueError(f"{source}: train/ and val/ have different class folders")
    _, val_files, val_labels = lists["val"]
    if not 0 < val_size < len(val_files):
        raise ValueError(f"--val-size {val_size} must leave test images among the {len(val_files)} in val/")
    order = np.random.default_rng(seed).permutation(len(val_files))
    val, test = np.sort(order[:val_size]), np.sort(order[val_size:])
    names = [os.path.relpath(f, os.path.join(source, "train")) for f in train_files]
    val_images = FolderImages(val_files, size, workers)
    return Dataset(FolderImages(train_files, size, workers), train_labels, val_images[test], val_labels[test],
                   list(classes), names, val_images=val_images[val], val_labels=val_labels[val])
