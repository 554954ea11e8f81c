// Shared by both review pages: the box of the centre crop the model saw (an item's crop, in % of the
// photo), placed over the photo and shown only while the reviewer asked for it (key c).
window.placeCrop = (box, crop, shown) => {
  "use strict";
  if (crop) {
    box.style.left = crop.left + "%";
    box.style.top = crop.top + "%";
    box.style.width = crop.width + "%";
    box.style.height = crop.height + "%";
  }
  box.hidden = !(shown && crop);
};
