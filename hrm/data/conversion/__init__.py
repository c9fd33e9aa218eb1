"""hrm.data.conversion: converting the data: the reader of the 18 raw files, the HRM layout writer, augmentation."""
